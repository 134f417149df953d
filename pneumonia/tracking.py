"""MLflow tracking: where the store is, one run per pipeline run, reference runs.

Store: ``MLFLOW_TRACKING_URI`` when set (a team server), else a real sqlite store at the
*repository root* (``sqlite:///<root>/mlflow.db``, artifacts in ``<root>/mlruns``), never in the
current directory: ``dvc exp run --temp`` / ``--queue`` run stages in a throw-away copy whose
files are deleted afterwards.

One MLflow run spans train and evaluate: train opens it and writes its id to
models/mlflow_run.json; evaluate continues it (or, when that run already holds test metrics, opens
a child run instead of overwriting them). The paper's Table III and the Kaggle baseline are logged
once per experiment as reference runs with the same metric names (see pneumonia/evaluation/paper.py).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumonia.errors import PipelineError, mask_credentials
from pneumonia.evaluation.paper import REFERENCE_TAG, reference_metrics
from pneumonia.files import write_json
from pneumonia.paths import MLFLOW_RUN_FILE

if TYPE_CHECKING:
    import keras
    import mlflow
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "pneumonia-densenet201"
RUN_NAME_TAG = "mlflow.runName"
PARENT_TAG = "mlflow.parentRunId"

# Measured with DVC 3.67.1 (scratch git+dvc repo whose stage dumped its env and cwd):
#   dvc exp run          cwd = <root>,                                DVC_ROOT = <root>
#   dvc exp run --temp   cwd = <root>/.dvc/tmp/exps/standalone/tmpXXXX, DVC_ROOT = <root>
#   dvc exp run --queue  cwd = <root>/.dvc/tmp/exps/tmpXXXX,            DVC_ROOT = <root>
# (DVC_EXP_NAME and DVC_EXP_BASELINE_REV are set in all three). So DVC_ROOT already names the main
# repository; the `/.dvc/tmp/exps/` fallback covers a DVC that would point DVC_ROOT at the copy.
_EXPS_SEGMENT = f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}"


def repo_root(cwd: Path | None = None) -> Path:
    """The main repository's root, also from inside a `dvc exp run --temp/--queue` copy."""
    cwd = (cwd or Path.cwd()).resolve()
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root:
        root = Path(dvc_root).resolve()
        if _EXPS_SEGMENT not in f"{root}{os.sep}":
            return root
        cwd = root
    text = f"{cwd}{os.sep}"
    if _EXPS_SEGMENT in text:
        return Path(text.split(_EXPS_SEGMENT, 1)[0])
    return cwd


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else the sqlite store at the repository root.

    A relative sqlite path is refused before anything opens it: SQLite would resolve it
    against the current directory (a throw-away copy under `dvc exp run --temp/--queue`), and
    MLflow would create the file there, then fail on its artifact location (raw ValueError)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{repo_root() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        rel = uri[len("sqlite:///") :].split("?", 1)[0]
        if rel and not Path(rel).is_absolute():
            raise PipelineError(
                f"MLFLOW_TRACKING_URI={uri} is a relative path ({rel}): SQLite would resolve it "
                "against the current directory, which is a throw-away copy under `dvc exp run "
                "--temp` or `--queue`. Give an absolute path (four slashes): "
                f"MLFLOW_TRACKING_URI=sqlite:///{repo_root() / rel} — or unset "
                "MLFLOW_TRACKING_URI to use the store at the repository root."
            )
    return uri


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT


def _health_request(uri: str) -> urllib.request.Request:
    """GET <uri>/health, with the credentials MLflow itself would send: the URI's userinfo
    (urllib cannot take it in the URL), else MLFLOW_TRACKING_USERNAME/PASSWORD, else
    MLFLOW_TRACKING_TOKEN."""
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health",
                                   "", ""))
    request = urllib.request.Request(url)
    user, password = parts.username, parts.password
    if user is not None:
        user, password = urllib.parse.unquote(user), urllib.parse.unquote(password or "")
    else:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
    return request


def server_problem(uri: str, timeout: float = 3.0) -> str | None:
    """Why the tracking server at an http(s) `uri` is unusable; None when it answers 200 at
    /health, as MLflow does (or when `uri` is not a server).

    Only a 200 counts: a 404 means another program owns the port (or the URI is not the
    server's root) — MLflow's own calls would then fail with a raw MlflowException."""
    if urllib.parse.urlparse(uri).scheme not in ("http", "https"):
        return None
    request = _health_request(uri)
    health = mask_credentials(request.full_url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (TimeoutError, urllib.error.URLError, OSError) as exc:
        return mask_credentials(str(getattr(exc, "reason", exc)))
    if status == 200:
        return None
    if status in (401, 403):
        return (f"GET {health} answered HTTP {status}: the server wants credentials; set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (docs/security.md)")
    return (f"GET {health} answered HTTP {status}, not 200: is this an MLflow tracking server, "
            "and is the URI its root?")


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail fast (no MLflow retry storm) when a tracking server is down or a store unusable."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        problem = server_problem(uri, timeout)
        if problem is None:
            return
        raise PipelineError(
            f"MLflow tracking server at {mask_credentials(uri)} is unreachable or not an "
            f"MLflow server ({problem}): start it (`mlflow server --backend-store-uri "
            "sqlite:///mlflow.db --port <port>`), check MLFLOW_TRACKING_URI, or unset "
            "MLFLOW_TRACKING_URI to use the local sqlite store."
        )
    if parsed.scheme == "sqlite":
        db = Path(uri[len("sqlite:///") :])
        if not db.parent.is_dir():
            raise PipelineError(
                f"MLflow store {uri}: folder {db.parent} does not exist. Create it, or unset "
                "MLFLOW_TRACKING_URI to use the store at the repository root."
            )
        check_sqlite_store(db)


def check_sqlite_store(db: Path) -> None:
    """A sqlite store that exists must be a readable SQLite database (else MLflow fails with a
    raw sqlalchemy error): name the file and the way out."""
    if not db.is_file() or db.stat().st_size == 0:
        return  # MLflow creates it
    try:
        with closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True,
                                     timeout=30)) as con:
            problems = [row[0] for row in con.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            return  # busy with another stage's writes: readable
        problems = [str(exc)]
    except sqlite3.DatabaseError as exc:  # "file is not a database"
        problems = [str(exc)]
    if problems == ["ok"]:
        return
    raise PipelineError(
        f"MLflow store {db} is not a readable SQLite database ({'; '.join(problems[:3])}). "
        f"Keep it for inspection and start a new store: `mv {db} {db}.broken`, then run "
        "again (a new, empty store is created; the runs of the old one are not in it) — or "
        "restore the file from a backup, or point MLFLOW_TRACKING_URI at another store."
    )


STORE_LOCK_TIMEOUT = 300.0  # s; first-time set-up (migrations, references) takes seconds


STORE_LOCK_TIMEOUT = 300.0  # s; first-time set-up (migrations, references) takes seconds


@contextmanager
def store_lock(uri: str, timeout: float = STORE_LOCK_TIMEOUT) -> Iterator[None]:
    """Serialise first-time set-up of a sqlite store between concurrent stage processes.

    Two queued experiments (`dvc queue start -j 2`) start training at the same moment: creating
    the sqlite schema (alembic migrations), the experiment and the reference runs is not safe to
    race (migrations collide, references get logged twice). An advisory lock next to the
    database file orders them (filelock: flock on POSIX, msvcrt on Windows); a tracking server
    (http) does its own locking. A holder that hangs ends in a PipelineError naming the lock
    file and its holder after `timeout` seconds, not in a stage that waits forever.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock, Timeout

    lock_path = Path(uri[len("sqlite:///") :] + ".lock")
    lock = FileLock(lock_path, timeout=timeout, poll_interval=0.2)
    try:
        lock.acquire()
    except Timeout:
        raise PipelineError(
            f"waited {timeout:.0f} s for the MLflow store lock {lock_path}, held by "
            f"{lock_holder(lock_path)}: another stage is setting up the same store (e.g. a "
            "queued experiment), or that process hangs. Let it finish, or stop it (`kill <pid>`; "
            "the lock is released when its holder exits), then run again."
        ) from None
    try:
        yield
    finally:
        lock.release()


def lock_holder(path: Path) -> str:
    """Who holds a flock on `path`: "pid N (command)" from /proc/locks (Linux), else a hint."""
    try:
        inode = path.stat().st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            # 1: FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF  (a blocked waiter: "1: -> FLOCK")
            if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
                continue
            if fields[5].rsplit(":", 1)[-1] == str(inode):
                pid = int(fields[4])
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    return f"pid {pid} ({cmd.decode(errors='replace').strip()[:200]})"
                except OSError:
                    return f"pid {pid}"
    except (OSError, ValueError):
        pass
    return f"another process (`fuser {path}` names it)"


def setup() -> str:
    """Point MLflow at the store and the experiment; return the experiment id."""
    uri = tracking_uri()
    check_reachable(uri)
    with store_lock(uri):
        return _setup_experiment(uri)


def _setup_experiment(uri: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    name = experiment_name()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        mlflow.set_experiment(experiment_id=exp.experiment_id)
        return exp.experiment_id
    kwargs: dict[str, Any] = {}
    if uri.startswith("sqlite:"):
        # Artifacts next to the sqlite file (the repository root), not in the cwd: the artifact
        # root is stored absolute when the experiment is created.
        kwargs["artifact_location"] = (Path(uri[len("sqlite:///") :]).parent / "mlruns").as_uri()
    try:
        exp_id = mlflow.create_experiment(name, **kwargs)
    except MlflowException:  # created concurrently by another stage process
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


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
                   model_uri: str | None = None, params_sha256: str = "") -> dict[str, str]:
    """models/mlflow_run.json: which run evaluate continues, and the logged model it registers
    (the pyfunc of pneumonia.inference.pyfunc, `models:/m-<id>`)."""
    import mlflow

    info = {
        # Cached and pushed by DVC: never with the URI's credentials (docs/security.md).
        "tracking_uri": mask_credentials(mlflow.get_tracking_uri()),
        "experiment_id": run.info.experiment_id,
        "run_id": run.info.run_id,
    }
    if model_uri:
        info["model_uri"] = model_uri
    if params_sha256:  # the training params the train stage read (params.params_digest)
        info["params_sha256"] = params_sha256
    write_json(info, path)
    return info


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


def ensure_reference_runs(experiment_id: str) -> dict[str, str]:
    """Log Table III and the Kaggle baseline as reference runs, once (found again by tag)."""
    import mlflow

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
    from pneumonia.params import parse_params, training_params

    paper = parse_params({"lr": PAPER_LR, "data": {"raw": PAPER_DATA}})
    flat = {k: str(v) for k, v in training_params(paper).items()}
    return {"paper": flat, "kaggle-resnet": dict.fromkeys(flat, NOT_REPORTED)}


def _ensure_reference_runs(experiment_id: str) -> dict[str, str]:
    import mlflow
    from mlflow.entities import Param

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
