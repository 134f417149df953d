"""Test-set evaluation: `evaluate` (the evaluate stage's run: metrics, plots, MLflow) and `paper`
(the paper's Table III and its baseline, and the metric names shared with MLflow).

Stages import this file: an edit here re-runs them (dvc.yaml deps).
"""
