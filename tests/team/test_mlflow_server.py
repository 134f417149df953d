"""The MLflow tracking server with a PostgreSQL backend store and artifacts in S3: the pipeline's
runs, metrics, confusion matrix and model land there; two queued experiments at once too."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pneumonia.team.servers import BUCKET
from tests.team.conftest import EXPERIMENT, TeamProject, dvc, tracking_env


def client(project: TeamProject):
    from mlflow import MlflowClient

    assert project.servers.mlflow is not None
    return MlflowClient(tracking_uri=project.servers.mlflow.url)


def pipeline_runs(project: TeamProject) -> list:
    c = client(project)
    exp = c.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"experiment {EXPERIMENT} not on the server"
    runs = c.search_runs([exp.experiment_id], max_results=100)
    return [r for r in runs if "pipeline.reference" not in r.data.tags]


def s3_keys(project: TeamProject, prefix: str) -> list[str]:
    assert project.servers.s3 is not None
    s3 = project.servers.s3.client()
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


@pytest.mark.slow
def test_runs_metrics_artifacts_and_model_on_the_server(team_project: TeamProject) -> None:
    runs = pipeline_runs(team_project)
    by_lr = {float(r.data.params["lr"]): r for r in runs if "test_accuracy" in r.data.metrics}
    assert {1e-4, 3e-4} <= set(by_lr), [r.data.params.get("lr") for r in runs]
    for run in by_lr.values():
        assert run.info.status == "FINISHED"
        assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
        assert {"loss", "val_loss", "test_NORMAL_recall"} <= set(run.data.metrics)
        # Artifacts went through the server into the bucket, not onto this machine's disk.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        keys = s3_keys(team_project, "mlartifacts/")
        mine = [k for k in keys if run.info.run_id in k]
        assert any(k.endswith("evaluate/confusion_matrix.json") for k in mine), mine
        assert any(k.endswith("evaluate/confusion.png") for k in mine), mine

    import mlflow

    mlflow.set_tracking_uri(team_project.servers.mlflow.url)
    models = mlflow.search_logged_models(
        experiment_ids=[runs[0].info.experiment_id], output_format="list"
    )
    sources = {m.source_run_id for m in models}
    assert {r.info.run_id for r in by_lr.values()} <= sources
    model_keys = [k for k in s3_keys(team_project, "mlartifacts/") if "/models/" in k]
    assert any(k.endswith("MLmodel") for k in model_keys), model_keys[:20]


@pytest.mark.slow
def test_runs_are_stored_in_postgresql(team_project: TeamProject) -> None:
    import psycopg2

    assert team_project.servers.postgres is not None
    pgdata = team_project.servers.postgres.pgdata
    con = psycopg2.connect(host=str(pgdata), user="postgres", dbname="postgres")
    try:
        with con.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'")
            (finished,) = cur.fetchone()
    finally:
        con.close()
    assert finished >= 2


@pytest.mark.slow
def test_two_queued_experiments_both_land_on_the_server(team_project: TeamProject) -> None:
    repo: Path = team_project.repo
    env = tracking_env(team_project.servers)
    dvc(repo, "exp", "run", "--queue", "-n", "srv-lr-2e-4", "-S", "lr=2e-4", env=env)
    dvc(repo, "exp", "run", "--queue", "-n", "srv-lr-5e-4", "-S", "lr=5e-4", env=env)
    dvc(repo, "queue", "start", "-j", "2", env=env)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            status = dvc(repo, "queue", "status", env=env).stdout
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(5)
        else:
            pytest.fail(f"queue did not finish in time:\n{status}")
    finally:
        dvc(repo, "queue", "stop", "--kill", env=env, check=False)
    assert status.count("Success") == 2, status

    runs = {r.info.run_name: r for r in pipeline_runs(team_project)}
    for name in ("srv-lr-2e-4", "srv-lr-5e-4"):
        assert name in runs, sorted(runs)
        run = runs[name]
        assert run.info.status == "FINISHED", name
        assert {"loss", "val_loss", "test_accuracy"} <= set(run.data.metrics), name
