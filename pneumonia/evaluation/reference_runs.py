"""The paper's Table III and the Kaggle baseline as MLflow reference runs, logged once per
experiment under the metric names every run uses (pneumonia.evaluation.paper), so the MLflow UI
compares a run with them column by column. The evaluate stage ensures them.
"""

from __future__ import annotations

import mlflow
from mlflow.entities import Param

from pneumonia.evaluation.paper import REFERENCE_TAG, reference_metrics
from pneumonia.params import parse_params, training_params
from pneumonia.tracking import store_lock


def ensure_reference_runs(experiment_id: str) -> dict[str, str]:
    """Log Table III and the Kaggle baseline as reference runs, once (found again by tag)."""
    with store_lock(mlflow.get_tracking_uri()):
        return _ensure_reference_runs(experiment_id)


# The paper's learning rate and dataset: the two params without a default in the schema.
PAPER_LR = 2e-6
PAPER_DATA = "Kermany 2018 ChestXRay2017 (Mendeley Data v2)"
NOT_REPORTED = "not reported"


def reference_params() -> dict[str, dict[str, str]]:
    """The reference runs' params, derived from the params schema (pneumonia/params.py), so a
    param added there appears on them too and the MLflow compare view never shows it missing.
    paper: the schema's defaults, i.e. the paper's configuration as params.yaml holds it (where
    the paper is silent, this project's choice: docs/reproducing.md); the Kaggle baseline
    reports none. The same keys as a training run logs (params.training_params)."""
    paper = parse_params({"lr": PAPER_LR, "data": {"raw": PAPER_DATA}})
    flat = {k: str(v) for k, v in training_params(paper).items()}
    return {"paper": flat, "kaggle-resnet": dict.fromkeys(flat, NOT_REPORTED)}


def _ensure_reference_runs(experiment_id: str) -> dict[str, str]:
    ids: dict[str, str] = {}
    client = mlflow.MlflowClient()
    all_params = reference_params()
    for ref, metrics in reference_metrics().items():
        found = mlflow.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.`{REFERENCE_TAG}` = '{ref}'",
            output_format="list",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            held = found[0].data.params
        else:
            run_id = client.create_run(
                experiment_id,
                run_name=f"reference-{ref}",
                tags={
                    REFERENCE_TAG: ref,
                    "mlflow.note.content": "Numbers reported in the paper (not computed here). "
                    "Params: the paper's configuration in this pipeline's terms (where the paper "
                    "is silent, this project's choice; docs/reproducing.md).",
                },
            ).info.run_id
            held = {}
            for key, value in metrics.items():
                client.log_metric(run_id, key, value)
            client.set_terminated(run_id)
        # A store made by older code lacks the params added since: add them (never change one).
        missing = [Param(k, v) for k, v in all_params[ref].items() if k not in held]
        for start in range(0, len(missing), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=missing[start:start + 100])
        ids[ref] = run_id
    return ids
