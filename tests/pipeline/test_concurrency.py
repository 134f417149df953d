"""Two DVC experiments queued and run at once share one sqlite MLflow store without losing a run.

Slow (two full tiny pipelines in parallel on 2 cores: a few minutes): `make test-slow`.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.pipeline.test_dvc import TINY, dvc, make_project
from tests.prockit import kill_session_processes_in


@pytest.mark.slow
def test_two_queued_experiments_both_tracked(tmp_path: Path) -> None:
    repo = make_project(tmp_path, TINY)
    dvc(repo, "exp", "run", "--queue", "-n", "q-lr-1e-4", "-S", "lr=1e-4")
    dvc(repo, "exp", "run", "--queue", "-n", "q-lr-3e-4", "-S", "lr=3e-4")
    dvc(repo, "queue", "start", "-j", "2")
    try:
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline:
            status = dvc(repo, "queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(10)
        else:
            pytest.fail(f"queue did not finish in time:\n{status}")
    finally:
        # Also on a time-out or failure: the workers (daemons, not our children) and their
        # running experiments stop; whatever of this session still runs in the repo is killed.
        dvc(repo, "queue", "stop", "--kill", check=False)
        kill_session_processes_in(repo, grace=30)
    assert status.count("Success") == 2, status

    con = sqlite3.connect(repo / "mlflow.db")  # the repository root's store, not the copies'
    runs = dict(con.execute("SELECT name, run_uuid FROM runs WHERE name LIKE 'q-lr-%'"))
    assert set(runs) == {"q-lr-1e-4", "q-lr-3e-4"}
    for name, run_uuid in runs.items():
        (status_,) = con.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_uuid,)).fetchone()
        assert status_ == "FINISHED", name
        keys = {k for (k,) in con.execute("SELECT key FROM metrics WHERE run_uuid = ?", (run_uuid,))}
        assert {"loss", "val_loss", "test_accuracy", "test_NORMAL_recall"} <= keys, name
    refs = con.execute(
        "SELECT value, COUNT(*) FROM tags WHERE key = 'pipeline.reference' GROUP BY value"
    ).fetchall()
    assert refs and all(count == 1 for _, count in refs), refs  # logged once despite the race
