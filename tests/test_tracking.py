"""MLflow store location (also inside `dvc exp run --temp/--queue`), reachability, reference runs."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from pneumonia import pipeline_run, tracking
from pneumonia.errors import PipelineError
from pneumonia.evaluation import reference_runs
from tests.trainkit import make_split, run_stage, write_params


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_repo_root_in_workspace_temp_and_queue_experiments(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    main = tmp_path / "repo"
    temp_copy = main / ".dvc/tmp/exps/standalone/tmpk4qu6ct4"  # dvc exp run --temp
    queue_copy = main / ".dvc/tmp/exps/tmp1edxqj6v"  # dvc exp run --queue
    for d in (temp_copy, queue_copy):
        d.mkdir(parents=True)
    main = main.resolve()

    assert tracking.repo_root(main) == main  # plain run, no DVC
    assert tracking.repo_root(temp_copy) == main  # no DVC_ROOT: the path gives it away
    clean_env.setenv("DVC_ROOT", str(main))  # what DVC 3.67 sets (measured)
    assert tracking.repo_root(temp_copy) == main
    assert tracking.repo_root(queue_copy) == main
    clean_env.setenv("DVC_ROOT", str(temp_copy))  # a DVC pointing DVC_ROOT at the copy
    assert tracking.repo_root(temp_copy) == main

    clean_env.setenv("DVC_ROOT", str(main))
    clean_env.chdir(temp_copy)
    assert tracking.tracking_uri() == f"sqlite:///{main / 'mlflow.db'}"
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri() == "http://mlflow.example:5000"


def test_store_and_artifacts_at_repo_root_and_reference_runs_logged_once(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    import mlflow

    copy = tmp_path / ".dvc/tmp/exps/standalone/tmpabc"
    copy.mkdir(parents=True)
    clean_env.chdir(copy)
    clean_env.setenv("MLFLOW_EXPERIMENT_NAME", "refs-test")
    exp_id = tracking.setup()
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    exp = mlflow.get_experiment(exp_id)
    assert exp.artifact_location == (tmp_path.resolve() / "mlruns").as_uri()

    first = reference_runs.ensure_reference_runs(exp_id)
    second = reference_runs.ensure_reference_runs(exp_id)
    assert first == second and set(first) == {"paper", "kaggle-resnet"}
    runs = mlflow.search_runs([exp_id], output_format="list")
    assert len(runs) == 2
    paper = mlflow.get_run(first["paper"]).data
    assert paper.tags["pipeline.reference"] == "paper"
    assert paper.metrics["test_accuracy"] == 0.96
    assert paper.metrics["test_NORMAL_recall"] == 0.91
    assert paper.metrics["test_PNEUMONIA_support"] == 390
    baseline = mlflow.get_run(first["kaggle-resnet"]).data.metrics
    assert baseline == {"test_accuracy": 0.92, "test_NORMAL_recall": 0.82}
    mlflow.set_tracking_uri("")  # do not leak into other tests


def test_reference_runs_carry_every_training_param_of_the_schema(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """The MLflow compare view shows the paper's reference run with a value for every param a
    training run logs (derived from the params schema, so they never fall behind), and a store
    whose reference runs were made by older code gets the missing params added."""
    import mlflow

    from pneumonia.params import load_params, training_params

    clean_env.chdir(tmp_path)
    clean_env.setenv("MLFLOW_EXPERIMENT_NAME", "refs-params")
    exp_id = tracking.setup()
    client = mlflow.MlflowClient()
    old = client.create_run(exp_id, run_name="reference-paper",  # as older code left it
                            tags={"pipeline.reference": "paper"})
    client.log_metric(old.info.run_id, "test_accuracy", 0.96)
    client.log_param(old.info.run_id, "lr", "2e-06")  # one param, logged by hand back then
    client.set_terminated(old.info.run_id)

    ids = reference_runs.ensure_reference_runs(exp_id)
    assert ids["paper"] == old.info.run_id  # the existing run is kept, not duplicated
    paper = mlflow.get_run(ids["paper"]).data.params
    committed = training_params(load_params(Path(__file__).resolve().parents[1] / "params.yaml"))
    training = set(committed)
    assert training <= set(paper)  # what train logs, the reference run has
    # ... and no more: not the evaluate stage's params, nor the grids' own settings
    assert not [k for k in paper if k.startswith(("evaluate.", "ablation.", "recipe."))]
    assert paper["balance.method"] == "augmentor"
    assert paper["model.backbone"] == "densenet201"
    assert paper["lr"] == "2e-06"  # an existing value is never changed
    for key in training - {"lr", "data.raw"}:  # params.yaml is the paper's configuration
        assert paper[key] == str(committed[key]), key
    kaggle = mlflow.get_run(ids["kaggle-resnet"]).data.params
    assert set(kaggle) == set(paper) and set(kaggle.values()) == {"not reported"}
    mlflow.set_tracking_uri("")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_message() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(
        PipelineError, match="unreachable.*mlflow server.*unset MLFLOW_TRACKING_URI"
    ):
        tracking.check_reachable(uri, timeout=2)


def test_train_with_unreachable_server_exits_2_before_training(tmp_path: Path) -> None:
    make_split(tmp_path)
    write_params(tmp_path)
    where = f"127.0.0.1:{_closed_port()}"
    uri = f"http://alice:s3cret@{where}"  # credentials in the URI are never printed
    started = time.monotonic()
    proc = run_stage(tmp_path, "train", timeout=120, MLFLOW_TRACKING_URI=uri)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    assert f"MLflow tracking server at http://***@{where} is unreachable" in proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr
    assert "unset MLFLOW_TRACKING_URI" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Epoch 1" not in proc.stdout + proc.stderr
    assert not (tmp_path / "models").exists()  # nothing built, no resume state
    assert took < 30, f"took {took:.0f} s"


def a_training_run(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> str:
    """A fresh sqlite store holding one finished training run (its params); its run id."""
    import mlflow

    clean_env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.setup()
    with mlflow.start_run() as train:
        mlflow.log_params({"lr": 2e-6, "evaluate.threshold": 0.5})
    return train.info.run_id


def test_evaluate_run_continues_then_branches_and_survives_a_foreign_run_id(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mlflow

    train_id = a_training_run(tmp_path, clean_env)

    with pipeline_run.evaluate_run(train_id, "test_accuracy") as run:  # first evaluation
        assert run.info.run_id == train_id
        mlflow.log_metric("test_accuracy", 0.9)
    with pipeline_run.evaluate_run(train_id, "test_accuracy") as run:  # re-evaluation
        child = run.info.run_id
        mlflow.log_metric("test_accuracy", 0.8)
    assert child != train_id
    data = mlflow.get_run(child).data
    assert data.tags["mlflow.parentRunId"] == train_id
    assert data.params == {"lr": "2e-06"}  # training params copied, evaluate.* its own
    assert mlflow.get_run(train_id).data.metrics["test_accuracy"] == 0.9  # untouched

    with caplog.at_level("WARNING"), pipeline_run.evaluate_run("f" * 32, "test_accuracy") as run:
        assert run.info.run_id not in (train_id, child)
    assert "is not in the store" in caplog.text
    mlflow.set_tracking_uri("")


def test_evaluated_thresholds_lists_the_models_earlier_test_evaluations(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    import mlflow

    train_id = a_training_run(tmp_path, clean_env)
    assert pipeline_run.evaluated_thresholds(train_id, "test_accuracy") == []  # not evaluated yet
    with pipeline_run.evaluate_run(train_id, "test_accuracy"):
        mlflow.log_metric("test_accuracy", 0.9)
    with pipeline_run.evaluate_run(train_id, "test_accuracy"):  # a child run at another threshold
        mlflow.log_params({"evaluate.threshold": 0.3})
        mlflow.log_metric("test_accuracy", 0.92)
    assert sorted(pipeline_run.evaluated_thresholds(train_id, "test_accuracy")) == [0.3, 0.5]
    assert pipeline_run.evaluated_thresholds("f" * 32, "test_accuracy") == []  # not in this store
    mlflow.set_tracking_uri("")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("{not json", "is not valid JSON"), ("[1, 2]", "must be a JSON object"),
     ('{"run_id": "abc"}', "lacks tracking_uri, experiment_id"), (b"\xff\xfe\x00", "not valid JSON")],
)
def test_corrupt_run_file_is_a_clear_error(tmp_path: Path, content: str | bytes,
                                           fragment: str) -> None:
    path = tmp_path / "mlflow_run.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(PipelineError) as err:
        pipeline_run.read_run_file(path)
    assert fragment in str(err.value) and str(path) in str(err.value)
    assert "dvc repro --force train" in str(err.value)
    good = {"tracking_uri": "sqlite:///x.db", "experiment_id": "1", "run_id": "abc"}
    path.write_text(json.dumps(good))
    assert pipeline_run.read_run_file(path) == good


def test_evaluate_with_corrupt_run_file_or_garbled_split_exits_2(tmp_path: Path) -> None:
    """As DVC runs it: one message naming the file and the fix, exit 2, no traceback."""
    make_split(tmp_path)
    write_params(tmp_path)
    run_file = tmp_path / "models" / "mlflow_run.json"
    run_file.parent.mkdir()
    run_file.write_text('{"tracking_uri": "sqlite:///m.db", "run_id": ')  # cut short
    proc = run_stage(tmp_path, "evaluate", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "models/mlflow_run.json is not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr

    split_csv = tmp_path / "data" / "split.csv"
    split_csv.write_bytes(b'image_id,path\n"IM-1,data/x.png\n' + bytes(range(128, 256)))
    proc = run_stage(tmp_path, "evaluate", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "data/split.csv cannot be read as CSV" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_store_lock_times_out_naming_the_lock_file(tmp_path: Path) -> None:
    """A second process holding the store lock (filelock, flock on Linux): the stage waits
    `timeout` seconds, then one message names the lock file; once free, the lock is taken."""
    import subprocess
    import sys

    db = tmp_path / "mlflow.db"
    lock = tmp_path / "mlflow.db.lock"
    hold = ("import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); "
            "l.acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineError) as exc, tracking.store_lock(f"sqlite:///{db}",
                                                                      timeout=1):
            pytest.fail("the lock is held")
        assert f"waited 1 s for the MLflow store lock {lock}" in str(exc.value)
    finally:
        holder.kill()
        holder.wait()
    with tracking.store_lock(f"sqlite:///{db}", timeout=5):  # its holder gone: free again
        pass
