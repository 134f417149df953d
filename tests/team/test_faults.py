"""The tracking server killed in the middle of training: the train stage stops after the epoch
with one clear message (exit 2, no traceback), its state kept; with the server back, `dvc repro`
resumes, finishes the same MLflow run, and no run is left RUNNING. Nothing pulled is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.prockit import process_group
from tests.team.conftest import (
    EXPERIMENT,
    TeamProject,
    clone,
    dvc,
    lock_hash,
    set_params,
    tracking_env,
)
from tests.trainkit import wait_for_epoch


@pytest.mark.slow
def test_server_killed_mid_training_then_repro_resumes(
    team_project: TeamProject, tmp_path: Path
) -> None:
    servers = team_project.servers
    assert servers.mlflow is not None and servers.mlflow.proc is not None
    repo = clone(team_project, tmp_path / "clone")
    env = tracking_env(servers)
    dvc(repo, "pull", env=env)
    split_before = lock_hash(repo, "split", "data/split.csv")
    set_params(repo, {"train.epochs": 6, "lr": 2e-4})  # train (and evaluate) must re-run

    # `dvc repro` and the stage it runs in one process group: killed together if the test fails
    # (killing only dvc orphaned the training stage).
    with process_group([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        wait_for_epoch(repo, proc)
        os.killpg(servers.mlflow.proc.pid, signal.SIGKILL)  # the server dies, no goodbye
        servers.mlflow.proc.wait(timeout=30)
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out
    assert f"ERROR [train]: MLflow tracking server at {servers.mlflow.url} stopped answering" in out
    assert "dvc repro" in out.split("ERROR [train]")[1]  # the fix
    assert "Traceback" not in out, out[-4000:]
    assert "exited with 2" in out, out[-2000:]
    (backup,) = repo.glob("models/.train-backup/*")
    stopped_after = json.loads((backup / "training_metadata.json").read_text())["epoch"]
    assert 1 <= stopped_after < 6  # stopped early, its finished epochs kept
    run_id = (backup / "mlflow_run_id").read_text().strip()

    servers.mlflow.start()  # same port, same PostgreSQL and bucket
    resumed = dvc(repo, "repro", env=env)
    assert f"resuming from epoch {stopped_after}" in resumed.stdout + resumed.stderr
    assert "up to date" in dvc(repo, "status", env=env).stdout
    assert not backup.exists()
    assert lock_hash(repo, "split", "data/split.csv") == split_before  # data untouched

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=servers.mlflow.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"  # the same run, resumed and ended
    assert json.loads((repo / "models/mlflow_run.json").read_text())["run_id"] == run_id
    assert "test_accuracy" in run.data.metrics
    exp = client.get_experiment_by_name(EXPERIMENT)
    running = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    assert not running, [r.info.run_id for r in running]
    # Nothing of the cache is lost: the results push and the clone stays consistent.
    dvc(repo, "push", env=env)
