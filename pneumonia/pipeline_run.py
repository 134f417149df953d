"""The pipeline's MLflow run: train opens it (or continues a killed training's run) and writes its
id to models/mlflow_run.json; evaluate continues it, or opens a child run when it already holds
test metrics. What every run carries: git commit and DVC experiment tags, params, the split it
saw, per-epoch metrics. The store itself: pneumonia.tracking.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumonia.errors import PipelineError, mask_credentials
from pneumonia.files import write_json
from pneumonia.paths import MLFLOW_RUN_FILE
from pneumonia.tracking import server_problem

if TYPE_CHECKING:
    import keras
    import mlflow
    import pandas as pd

log = logging.getLogger(__name__)

RUN_NAME_TAG = "mlflow.runName"
PARENT_TAG = "mlflow.parentRunId"


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD's commit, or None outside git (tagging is best effort)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def run_tags() -> dict[str, str]:
    """Tags every pipeline run carries: git commit and the DVC experiment it belongs to."""
    tags: dict[str, str] = {}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(var):
            tags[f"dvc.{var.lower().removeprefix('dvc_')}"] = os.environ[var]
    return tags


class TrackingLost(PipelineError):
    """The tracking server stopped answering during training (training state is kept)."""


@contextmanager
def train_run(resume_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open the pipeline run for training (or continue a killed training's run)."""
    import mlflow

    if resume_run_id and run_exists(resume_run_id):
        log.info("continuing MLflow run %s of the interrupted training", resume_run_id)
        run = mlflow.start_run(run_id=resume_run_id)
    else:
        run = mlflow.start_run(run_name=os.environ.get("DVC_EXP_NAME") or None, tags=run_tags())
    try:
        yield run
    except TrackingLost:
        # The server is gone: ending the run would only retry for minutes. Forget it locally;
        # the resumed training continues this run id and ends it (docs/team.md).
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "3"
        with suppress(Exception):
            mlflow.end_run("FAILED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def check_still_tracking(callback: keras.callbacks.Callback, backup_dir: Path) -> None:
    """After fit: raise TrackingLost when the epoch callback (or a last health check) found the
    tracking server gone, naming where the training state is and how to resume."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    lost = getattr(callback, "lost", None) or server_problem(uri)
    if lost is None:
        return
    raise TrackingLost(
        f"MLflow tracking server at {mask_credentials(uri)} stopped answering during training ({lost}). "
        f"Training stopped after its last finished epoch; weights, optimizer state and history "
        f"are kept in {backup_dir}. Start the server again (same backend store), then rerun "
        "`dvc repro`: training resumes there and continues the same MLflow run."
    )


def run_exists(run_id: str) -> bool:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_run(run_id)
    except MlflowException:
        return False
    return True


def log_params(flat: dict[str, Any]) -> None:
    """Log params to the active run, skipping those it already holds (MLflow refuses to change
    a logged param; a re-opened run may hold some from an interrupted attempt)."""
    import mlflow

    held = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    new = {k: ("none" if v is None else v) for k, v in flat.items() if k not in held}
    changed = sorted(k for k, v in flat.items() if k in held and held[k] != str(v))
    if changed:
        log.warning("MLflow run keeps its earlier value of param(s) %s", ", ".join(changed))
    if new:
        mlflow.log_params(new)


def log_split(
    df: pd.DataFrame, split_csv: Path, digest: str, context: str, name: str = "split"
) -> None:
    """Dataset lineage: which split.csv (by sha256) the run saw, and which rows of it
    (`name`: "split" for all rows, "split-test" for the test subset)."""
    import mlflow

    with warnings.catch_warnings():
        # MLflow registers its local-file source class twice and warns about the ambiguity.
        warnings.filterwarnings("ignore", message="The specified dataset source")
        dataset = mlflow.data.from_pandas(
            df, source=str(split_csv.resolve()), name=name, digest=digest[:16], targets="label"
        )
    mlflow.log_input(dataset, context=context, tags={"sha256": digest})


def epoch_metrics_callback() -> keras.callbacks.Callback:
    """A Keras callback logging each epoch's metrics (and learning rate) to the active run.

    Our own small callback instead of autolog/MlflowCallback: together those log twice, and
    autolog would also log the model and params its own way.
    """
    import keras
    import mlflow
    from mlflow.exceptions import MlflowException

    class EpochMetrics(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

        lost: str | None = None  # why the tracking server stopped answering

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            metrics = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
            metrics["lr"] = self._lr
            # A server that is gone would make MLflow retry for minutes: ask /health first and
            # stop after this epoch (its backup is still written) instead of training untracked.
            problem = server_problem(mlflow.get_tracking_uri())
            if problem:
                log.error("MLflow server gone after epoch %d (%s): stopping", epoch + 1, problem)
                self.lost = f"after epoch {epoch + 1}: {problem}"
                self.model.stop_training = True
                return
            try:
                mlflow.log_metrics(metrics, step=epoch + 1)  # step = 1-based epoch, as in the CSV
            except MlflowException as exc:
                # The epoch is still in metrics/train_history.csv.
                log.warning("could not log epoch %d to MLflow: %s", epoch + 1, exc)

    return EpochMetrics()


def write_run_file(run: mlflow.ActiveRun, path: Path = MLFLOW_RUN_FILE,
                   params_sha256: str = "") -> dict[str, str]:
    """models/mlflow_run.json: which run evaluate continues (and logs the served model to), and
    the digest of the params the train stage read (`params_sha256`, params.params_digest)."""
    import mlflow

    info = {
        # Cached and pushed by DVC: never with the URI's credentials (docs/security.md).
        "tracking_uri": mask_credentials(mlflow.get_tracking_uri()),
        "experiment_id": run.info.experiment_id,
        "run_id": run.info.run_id,
    }
    if params_sha256:
        info["params_sha256"] = params_sha256
    write_json(info, path)
    return info


def check_params_unchanged(info: dict[str, str], digest: str, path: Path = MLFLOW_RUN_FILE
                           ) -> None:
    """PipelineError when the training params evaluate reads are not those the train stage read
    (recorded in models/mlflow_run.json): params.yaml changed while the pipeline ran."""
    recorded = info.get("params_sha256")
    if recorded and recorded != digest:
        raise PipelineError(
            f"params.yaml changed after the train stage read it ({path} records other training "
            "params than params.yaml holds now): another `dvc exp run` or `dvc repro` in this "
            "workspace? Nothing is registered. Run experiments side by side with "
            "`dvc exp run --queue` (then `dvc queue start`) or `dvc exp run --temp`, one "
            "workspace run at a time; then `dvc repro` again.")


RUN_FILE_KEYS = ("tracking_uri", "experiment_id", "run_id")


def read_run_file(path: Path = MLFLOW_RUN_FILE) -> dict[str, str]:
    """models/mlflow_run.json, checked: which MLflow run the train stage logged to."""
    if not path.is_file():
        raise PipelineError(f"{path} not found: run the train stage first (`dvc repro`).")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        info, problem = None, f"is not valid JSON ({exc})"
    else:
        problem = "must be a JSON object"
    if isinstance(info, dict):
        missing = [k for k in RUN_FILE_KEYS if not isinstance(info.get(k), str) or not info[k]]
        if not missing:
            return info
        problem = f"lacks {', '.join(missing)}"
    raise PipelineError(
        f"{path} {problem}: it is written by the train stage and should hold "
        f"{', '.join(RUN_FILE_KEYS)}. Restore it with `dvc checkout {path}` (or `git checkout`), "
        "or re-run training: `dvc repro --force train`."
    )


@contextmanager
def evaluate_run(train_run_id: str, has_test_metrics_key: str) -> Iterator[mlflow.ActiveRun]:
    """Open the run evaluate logs into.

    - the training run, when it holds no test metrics yet (the normal `dvc repro` path);
    - a new child run (tag mlflow.parentRunId, the training run's params copied) when it already
      does (evaluate re-run alone, e.g. another threshold): results are never overwritten;
    - a new run with a warning when the training run is not in this store.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        parent = mlflow.get_run(train_run_id)
    except MlflowException:  # not in this store (another machine's run, a fresh store)
        parent = None
    if parent is not None and has_test_metrics_key not in parent.data.metrics:
        with mlflow.start_run(run_id=train_run_id) as run:
            yield run
        return
    tags = run_tags()
    if parent is None:
        log.warning(
            "MLflow run %s (models/mlflow_run.json) is not in the store %s: logging the "
            "evaluation to a new run. Re-run the train stage to have one run per pipeline run.",
            train_run_id,
            mask_credentials(mlflow.get_tracking_uri()),
        )
        with mlflow.start_run(run_name=os.environ.get("DVC_EXP_NAME") or None, tags=tags) as run:
            yield run
        return
    log.info(
        "run %s already holds test metrics: logging this evaluation to a child run", train_run_id
    )
    tags[PARENT_TAG] = train_run_id
    name = parent.data.tags.get(RUN_NAME_TAG, train_run_id[:8])
    with mlflow.start_run(run_name=f"{name}-evaluate", tags=tags) as run:
        # The training params, not the parent's evaluate.* (this run logs its own).
        inherited = {k: v for k, v in parent.data.params.items() if not k.startswith("evaluate.")}
        if inherited:
            mlflow.log_params(inherited)
        yield run


def evaluated_thresholds(train_run_id: str, test_metric_key: str) -> list[float]:
    """The thresholds (param evaluate.threshold) at which the model of training run
    `train_run_id` was already evaluated on the test set: by the training run itself and by its
    evaluate child runs, those holding `test_metric_key`. Empty when the run is not in the store."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        parent = mlflow.get_run(train_run_id)
    except MlflowException:
        return []
    runs = [parent] + mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{train_run_id}'",
        output_format="list",
    )
    found = []
    for run in runs:
        value = run.data.params.get("evaluate.threshold")
        if test_metric_key in run.data.metrics and value is not None:
            found.append(float(value))
    return found
