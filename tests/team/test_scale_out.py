"""Scale-out training checked without a GPU: the train stage under MirroredStrategy over two
logical CPU devices (with mixed precision: loss scaling), and MultiWorkerMirroredStrategy with two
local worker processes talking over 127.0.0.1."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pneumonia.params import ParamsError, parse_params
from tests.trainkit import REPO, make_split, run_stage, write_params


def test_distribute_params_are_validated() -> None:
    base = {"lr": 1e-3, "data": {"raw": "x"}}
    with pytest.raises(ParamsError, match=r"train.distribute.*mirrored"):
        parse_params(base | {"train": {"distribute": "horovod"}})
    with pytest.raises(ParamsError, match=r"train.cpu_devices"):
        parse_params(base | {"train": {"cpu_devices": 0}})
    p = parse_params(base | {"train": {"distribute": "mirrored", "cpu_devices": 2}})
    assert (p.train.distribute, p.train.cpu_devices) == ("mirrored", 2)


@pytest.mark.slow
def test_train_stage_mirrored_over_two_cpu_devices(tmp_path: Path) -> None:
    make_split(tmp_path)
    write_params(
        tmp_path, train__epochs=2, train__batch_size=24, train__distribute="mirrored",
        train__cpu_devices=2, train__mixed_precision="on",
    )
    proc = run_stage(tmp_path, "train", timeout=600, MLFLOW_EXPERIMENT_NAME="mirrored")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "metrics/details/train.json").read_text())
    assert summary["replicas"] == 2
    assert summary["global_batch_size"] == 48  # batch_size x replicas
    assert "2 logical devices" in summary["device"]
    assert summary["precision"] == "mixed_float16"
    assert summary["loss_scaling"] is True  # Keras 3 wraps Adam in a LossScaleOptimizer
    history = pd.read_csv(tmp_path / "metrics/train_history.csv")
    assert len(history) == 2
    for col in ("loss", "val_loss"):
        assert history[col].map(math.isfinite).all() and (history[col] > 0).all(), history
    for col in ("accuracy", "val_accuracy"):
        assert history[col].between(0, 1).all(), history

    import sqlite3

    con = sqlite3.connect(tmp_path / "mlflow.db")
    tags = dict(con.execute("SELECT key, value FROM tags"))
    assert tags["replicas"] == "2" and tags["precision"] == "mixed_float16"
    losses = [v for (v,) in con.execute("SELECT value FROM metrics WHERE key = 'loss'")]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)


def test_multi_worker_check_without_tf_config_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"} | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pneumonia", "team", "multiworker"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2 and "TF_CONFIG" in proc.stderr
    assert "Traceback" not in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Slow (two worker processes, each building and training a network: ~30 s on 2 cores).
@pytest.mark.slow
def test_multi_worker_mirrored_two_local_workers(tmp_path: Path) -> None:
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    procs = []
    for index in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
        env |= {
            "TF_CONFIG": json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            ),
            "PYTHONPATH": str(REPO),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pneumonia", "team", "multiworker",
             str(tmp_path / f"w{index}.json")],
            cwd=tmp_path,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        ))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    results = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    assert all(r["replicas"] == 2 for r in results)  # one replica per worker, in sync
    assert [r["task"]["index"] for r in results] == [0, 1]
    assert all(math.isfinite(v) for r in results for v in r["losses"])
    assert results[0]["losses"][-1] < results[0]["losses"][0]  # it learns
    assert results[0]["weights"] == results[1]["weights"]  # all-reduced: identical models
