"""Test-set evaluation: `evaluate` (the evaluate stage's orchestration), `metrics` (test metrics
with intervals), `plots` (DVC plot tables and figures), `reports` (table3.json and the
classification report text), `mlflow_names` (MLflow metric names) and `paper` (the paper's
Table III and its baseline, and the metric names shared with MLflow).

Stages import this file: an edit here re-runs them (dvc.yaml deps).
"""
