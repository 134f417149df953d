"""The tracking store under faults, each ending in one clear message (exit 2, no traceback):
credentials in the URI (never printed or stored), a server that is not MLflow (404), a relative
or corrupt sqlite store, a store lock held by a hung process. Real stores and a real
`mlflow server` on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pneumonia import pipeline_run, tracking
from pneumonia.errors import PipelineError, mask_credentials
from pneumonia.stage_runner import run_stage
from pneumonia.team.processes import free_port, stop_process, wait_http
from tests.prockit import process_group

SECRET = "s3cret-Pa55"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (sqlite store) on a free 127.0.0.1 port; its base URL."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job workers (~2 GB)
    log = folder / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--default-artifact-root", (folder / "artifacts").as_uri()],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture
def not_mlflow(tmp_path: Path) -> Iterator[str]:
    """Another program answering HTTP (404 at /health): Python's http.server."""
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
           str(tmp_path), str(port)]
    with process_group(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        wait_http(f"http://127.0.0.1:{port}/", proc, tmp_path / "none.log", timeout=30)
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def store_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_TRACKING_TOKEN", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "faults")
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def stage_exit(fn: object, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run `fn` as a stage does (pneumonia.stage_runner.run_stage); its exit code and stderr."""
    original = logging.getLogRecordFactory()
    try:
        with pytest.raises(SystemExit) as exc:
            run_stage(fn, "evaluate")
    finally:
        logging.setLogRecordFactory(original)
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(("text", "masked"), [
    ("http://alice:s3cret@host:5000/x", "http://***@host:5000/x"),
    ("https://tok3n@host/api", "https://***@host/api"),
    ("postgresql+psycopg2://u:p%40ss@/db?host=/tmp", "postgresql+psycopg2://***@/db?host=/tmp"),
    ("A http://a:b@h and 'https://c:d@k:1'.", "A http://***@h and 'https://***@k:1'."),
    ("http://127.0.0.1:5000/health", "http://127.0.0.1:5000/health"),
    ("mail alice@example.com", "mail alice@example.com"),
])
def test_mask_credentials(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked


def test_credentials_in_the_uri_are_never_stored_or_printed(
    not_mlflow: str, store_env: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    import mlflow

    where = not_mlflow.removeprefix("http://")
    uri = f"http://alice:{SECRET}@{where}"
    store_env.setenv("MLFLOW_TRACKING_URI", uri)
    # The run file (cached and pushed by DVC) of a run tracked at `uri`.
    from mlflow.entities import Run, RunData, RunInfo

    run = Run(RunInfo("0" * 32, "1", "u", "RUNNING", 0, None, "active"), RunData())
    mlflow.set_tracking_uri(uri)  # (also sets MLFLOW_TRACKING_URI; unset again below)
    try:
        pipeline_run.write_run_file(run, tmp_path / "mlflow_run.json")
    finally:
        mlflow.set_tracking_uri(None)
        store_env.setenv("MLFLOW_TRACKING_URI", uri)
    stored = (tmp_path / "mlflow_run.json").read_text()
    assert SECRET not in stored and "alice" not in stored
    assert json.loads(stored)["tracking_uri"] == f"http://***@{where}"

    # The stage's first check, an MLflow error past it, a log line, a bug's traceback.
    code, err = stage_exit(tracking.setup, capsys)
    assert code == 2 and f"server at http://***@{where} is unreachable or not" in err, err

    def failing() -> None:
        logging.getLogger("pneumonia.test").warning("store %s", uri)
        mlflow.MlflowClient(uri).get_run("0" * 32)

    with caplog.at_level(logging.WARNING):
        code, err = stage_exit(failing, capsys)
    assert code == 2 and f"the MLflow tracking store http://***@{where} failed" in err, err
    assert [r.getMessage() for r in caplog.records] == [f"store http://***@{where}"]
    assert SECRET not in caplog.text
    # A bug keeps its traceback (exit 1), the credentials in it masked.
    code, err = stage_exit(lambda: int(uri), capsys)
    assert code == 1 and "Traceback" in err, err
    assert f"ValueError: invalid literal for int() with base 10: 'http://***@{where}'" in err
    assert SECRET not in err


@pytest.mark.slow
def test_credentials_reach_a_real_mlflow_server_and_stay_out_of_files(
    mlflow_server: str, store_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Slow: a real `mlflow server` starts in ~15-60 s here. The URI's credentials are sent
    (the health check used to fail on them), and the run file holds the masked URI."""
    import mlflow

    store_env.setenv("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@{mlflow_server}")
    tracking.setup()
    with mlflow.start_run() as run:
        pipeline_run.write_run_file(run, tmp_path / "mlflow_run.json")
    assert json.loads((tmp_path / "mlflow_run.json").read_text())["tracking_uri"] == (
        f"http://***@{mlflow_server}")
    # The documented way: MLFLOW_TRACKING_USERNAME / PASSWORD and a URI without secrets.
    store_env.setenv("MLFLOW_TRACKING_URI", f"http://{mlflow_server}")
    store_env.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    store_env.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    request = tracking._health_request(f"http://{mlflow_server}")
    assert request.get_header("Authorization", "").startswith("Basic ")
    assert tracking.server_problem(f"http://{mlflow_server}") is None


def test_a_server_that_is_not_mlflow_is_refused(
    not_mlflow: str, store_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store_env.setenv("MLFLOW_TRACKING_URI", not_mlflow)
    code, err = stage_exit(tracking.setup, capsys)
    assert code == 2, err
    assert f"MLflow tracking server at {not_mlflow} is unreachable or not an MLflow server" in err
    assert "answered HTTP 404, not 200" in err and "Traceback" not in err
    # Past the health check (a proxy answering /health), MLflow's own error is one message too.
    import mlflow

    code, err = stage_exit(
        lambda: mlflow.MlflowClient(not_mlflow).get_experiment_by_name("x"), capsys)
    assert code == 2 and f"the MLflow tracking store {not_mlflow} failed" in err, err
    assert "Traceback" not in err


def test_relative_sqlite_uri_is_refused_before_any_file_is_made(
    store_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_env.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    code, err = stage_exit(tracking.setup, capsys)
    assert code == 2, err
    assert "MLFLOW_TRACKING_URI=sqlite:///mlflow.db is a relative path" in err
    assert f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path / 'mlflow.db'}" in err  # four slashes
    assert "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_sqlite_store_is_a_clear_error_and_kept(
    store_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    db = tmp_path / "mlflow.db"
    if damage == "garbage":
        db.write_bytes(b"these are not the runs you are looking for\n" * 200)
    else:  # a real store (tables, a run), then cut in half
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE runs (id TEXT, payload BLOB)")
            con.executemany("INSERT INTO runs VALUES (?, ?)",
                            [(str(i), os.urandom(2000)) for i in range(200)])
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    before = db.read_bytes()
    store_env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    code, err = stage_exit(tracking.setup, capsys)
    assert code == 2, err
    assert f"MLflow store {db} is not a readable SQLite database" in err
    assert f"mv {db} {db}.broken" in err and "Traceback" not in err
    assert db.read_bytes() == before  # the user's file is left as it was


def test_store_lock_held_by_a_hung_process_times_out_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    lock = tmp_path / "mlflow.db.lock"
    hold = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(300)")
    with process_group([sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE,
                       text=True) as holder:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineError) as exc, tracking.store_lock(f"sqlite:///{db}",
                                                                      timeout=1):
            pytest.fail("the lock is held")
        message = str(exc.value)
        assert f"waited 1 s for the MLflow store lock {lock}, held by pid {holder.pid}" in message
        assert "kill <pid>" in message
    with tracking.store_lock(f"sqlite:///{db}", timeout=5):  # its holder gone: free again
        pass
