"""Model registry: every evaluated model is a version; `champion` moves only through a gate.

The evaluate stage registers the model it evaluated as a version of the registered model
`evaluate.registry_name` (MLflow Model Registry, in the pipeline's store) and then decides its
alias (`decide`, a pure function):

- **champion** when its test accuracy is at least `evaluate.champion_min_accuracy` AND it is not
  significantly worse than the current champion on the same test images: the paired
  patient-grouped bootstrap of the accuracy difference (`pneumonia.stats.bootstrap.paired_deltas`,
  2000 resamples of patients, 95 % interval) must not lie entirely below 0. The exact McNemar
  test on the same images is reported beside it. The first model above the floor becomes
  champion (there is nothing to compare with).
- **challenger** otherwise, also when the comparison is impossible (no test image in common
  with the champion, its predictions unreadable): a champion is never replaced blindly.

The champion's per-image predictions come from its evaluate run's artifact
`evaluate/predictions.csv` (the version's tag `evaluate_run_id`). The decision and its reason
are logged to the run (tags `gate.*` and `evaluate/champion_gate.json`), to the version (tags)
and to metrics/registry.json (DVC). `pneumonia predict` uses `models:/<name>@champion` by default.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.files import write_json
from pneumonia.paths import LABELS, MODEL_FILE, PREDICTIONS_CSV, REGISTRY_JSON

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
PREDICTIONS_ARTIFACT = f"evaluate/{PREDICTIONS_CSV.name}"
N_RESAMPLES = 2000
LEVEL = 0.95


@dataclass
class Decision:
    alias: str  # champion | challenger
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


def _as_binary(labels: pd.Series) -> np.ndarray:
    return (labels.astype(str) == LABELS[1]).to_numpy(dtype=int)


def decide(accuracy: float | None, floor: float, candidate: pd.DataFrame, threshold: float,
           champion: dict[str, Any] | None) -> Decision:
    """The gate. `candidate` / `champion["predictions"]`: predictions.csv frames (image_id,
    patient_id, actual, probability); `champion`: {"version", "threshold", "predictions"} or
    {"version", "error"}; None when there is no champion yet."""
    details: dict[str, Any] = {"test_accuracy": accuracy, "min_accuracy": floor}
    if accuracy is None or accuracy < floor:
        shown = "undefined" if accuracy is None else f"{accuracy:.4f}"
        return Decision(CHALLENGER, f"test accuracy {shown} is below the floor "
                        f"evaluate.champion_min_accuracy = {floor:g}", details)
    if champion is None:
        return Decision(CHAMPION, f"first model above the floor ({accuracy:.4f} >= {floor:g}): "
                        "there was no champion", details)
    details["champion_version"] = champion["version"]
    if champion.get("error"):
        return Decision(CHALLENGER, f"cannot compare with champion version {champion['version']} "
                        f"({champion['error']}): the champion stays", details)
    merged = candidate.merge(champion["predictions"], on="image_id", suffixes=("", "_champion"))
    merged = merged[merged["actual"].astype(str) == merged["actual_champion"].astype(str)]
    details["common_test_images"] = n = len(merged)
    if n == 0:
        return Decision(CHALLENGER, f"no test image in common with champion version "
                        f"{champion['version']}: the two cannot be compared, the champion "
                        "stays", details)
    from pneumonia.stats.bootstrap import paired_deltas
    from pneumonia.stats.significance import mcnemar_exact

    y = _as_binary(merged["actual"])
    p_champ = merged["probability_champion"].to_numpy(dtype=float)
    p_cand = merged["probability"].to_numpy(dtype=float)
    t_champ = float(champion["threshold"])
    acc = paired_deltas(y, p_champ, p_cand, merged["patient_id"].astype(str).to_numpy(),
                        t_champ, threshold, n_resamples=N_RESAMPLES, seed=0,
                        level=LEVEL)["accuracy"]
    mc = mcnemar_exact(y, (p_champ >= t_champ).astype(int), (p_cand >= threshold).astype(int))
    details.update(champion_accuracy=acc["a"], candidate_accuracy=acc["b"],
                   accuracy_delta=acc["delta"], delta_ci_low=acc["ci_low"],
                   delta_ci_high=acc["ci_high"], verdict=acc["verdict"],
                   mcnemar_pvalue=mc["pvalue"], mcnemar_b=mc["b"], mcnemar_c=mc["c"],
                   test="paired patient-grouped bootstrap of the accuracy difference, "
                        f"{N_RESAMPLES} resamples, {LEVEL:.0%} interval")
    summary = (f"on {n} common test images accuracy {acc['b']:.4f} vs champion version "
               f"{champion['version']}'s {acc['a']:.4f} (delta {acc['delta']:+.4f}, "
               f"{LEVEL:.0%} patient-bootstrap interval [{acc['ci_low']:+.4f}, "
               f"{acc['ci_high']:+.4f}]; McNemar p = {mc['pvalue']:.3g})")
    if acc["verdict"] == "worse":
        return Decision(CHALLENGER, f"significantly worse than the champion: {summary}", details)
    return Decision(CHAMPION, f"above the floor and not significantly worse than the champion: "
                    f"{summary}", details)


# --------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------
def _champion(client: Any, name: str) -> tuple[Any, dict[str, Any] | None]:
    """The current champion version and what the gate needs of it (None: no champion)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    info: dict[str, Any] = {"version": mv.version}
    run_id = (mv.tags or {}).get("evaluate_run_id")
    if not run_id:
        info["error"] = "the version has no tag `evaluate_run_id`"
        return mv, info
    try:
        info["threshold"] = float(mv.tags.get("threshold", 0.5))
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, tmp)
            info["predictions"] = pd.read_csv(local, dtype={"image_id": str, "patient_id": str})
    except (MlflowException, OSError, ValueError) as exc:
        info["error"] = f"its test predictions (run {run_id}, {PREDICTIONS_ARTIFACT}) are " \
                        f"unreadable: {exc}"
    return mv, info


def model_to_register(run_file: dict[str, Any], threshold: float,
                      conformal: dict[str, Any] | None = None) -> str:
    """The logged pyfunc model of this training (models/mlflow_run.json `model_uri`), or a new
    one logged to the active run from models/model.keras when that one is not in this store or
    was logged with another default threshold than evaluate's (the served label must match) or
    another conformal calibration (`conformal`, evaluate's: the served prediction set)."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from pneumonia.inference.pyfunc import log_model

    uri = run_file.get("model_uri")
    if uri:
        try:
            config = Model.load(uri).flavors.get("python_function", {}).get("config") or {}
            if abs(float(config.get("threshold", -1)) - threshold) < 1e-12 \
                    and config.get("conformal") == conformal:
                return uri
            log.info("logged model %s has threshold %s, evaluate uses %g: logging a copy",
                     uri, config.get("threshold"), threshold)
        except (MlflowException, OSError) as exc:
            log.info("model %s not usable from this store (%s): logging it again", uri, exc)
    return log_model(MODEL_FILE, threshold, conformal=conformal)


def register_and_gate(name: str, floor: float, run_file: dict[str, Any],
                      metrics: dict[str, Any], predictions: pd.DataFrame,
                      run_id: str) -> tuple[Decision, str]:
    """Register this run's model, move its alias through the gate, log the decision.
    Returns (decision, version). Call inside the evaluate run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pneumonia.inference.pyfunc import conformal_config
    from pneumonia.tracking import store_lock

    client = mlflow.MlflowClient()
    threshold = float(metrics["threshold"])
    model_uri = model_to_register(run_file, threshold, conformal_config(metrics))
    # One gate at a time per store: two queued experiments finishing together must not both
    # compare against the same old champion and both take the alias.
    with store_lock(mlflow.get_tracking_uri()):
        champ_mv, champ = _champion(client, name)
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(
                name, description="Pneumonia classifier (chest X-ray). Aliases: champion "
                "(passed the gate, used by `pneumonia predict`), challenger (did not).")
        # A tracking server (REST store) refuses a `models:/m-...` source unless model_id names
        # the logged model it points at ("The model_id request parameter must identify the
        # resource that contains the source"); the local sqlite store accepts it either way.
        model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None
        mv = client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id)
        version = mv.version
        if champ_mv is not None and champ_mv.source == model_uri:
            decision = Decision(CHAMPION, f"the same model as champion version "
                                f"{champ_mv.version}, re-evaluated", {})
        else:
            decision = decide(metrics.get("accuracy"), floor, predictions, threshold, champ)
        for key, value in {"threshold": f"{threshold:g}", "evaluate_run_id": run_id,
                           "test_accuracy": str(metrics.get("accuracy")),
                           "gate.decision": decision.alias,
                           "gate.reason": decision.reason[:5000]}.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, decision.alias, version)
    doc = {"registered_model": name, "version": int(version), "model_uri": model_uri,
           **asdict(decision)}
    mlflow.set_tags({"gate.decision": decision.alias, "gate.reason": decision.reason[:5000],
                     "gate.registered_model": name, "gate.version": str(version)})
    mlflow.log_dict(doc, "evaluate/champion_gate.json")
    write_json(doc, REGISTRY_JSON)
    log.info("registered %s version %s as %s: %s", name, version, decision.alias,
             decision.reason)
    return decision, str(version)


def read_predictions(path: Path = PREDICTIONS_CSV) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str, "patient_id": str})
