"""Pneumonia detection on pediatric chest X-rays: a DVC + MLflow pipeline (README: "Project layout").

Kept to this docstring on purpose: every DVC stage imports this file, so an edit here re-runs them all.
"""
