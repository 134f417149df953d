"""The MLflow tracking store: where it is, whether it answers, and its one-time set-up.

Store: ``MLFLOW_TRACKING_URI`` when set (a team server), else a real sqlite store at the
*repository root* (``sqlite:///<root>/mlflow.db``, artifacts in ``<root>/mlruns``), never in the
current directory: ``dvc exp run --temp`` / ``--queue`` run stages in a throw-away copy whose
files are deleted afterwards.

The runs logged there: pneumonia.pipeline_run (one run spans train and evaluate);
pneumonia.evaluation.reference_runs (the paper's Table III, the Kaggle baseline).
"""

from __future__ import annotations

import base64
import logging
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from pneumonia.errors import PipelineError, mask_credentials

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "pneumonia-densenet201"

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
