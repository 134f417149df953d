"""The training backup cut short by a kill while Keras saves it: training resumes from the
previous copy, or starts over with one clear line — never a raw h5py `OSError: truncated file`
on every later run.

Fast: a small Keras model backed up by the real BackupAndRestore, its files truncated mid-file.
Slow: the train stage killed after epoch 2, its backup truncated, the stage run again."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumonia.model import backup
from tests.trainkit import make_split, run_stage, stage_env, write_params


def truncate(path: Path) -> None:
    """Cut `path` mid-file, as a kill during its write leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def fit(backup_dir: Path, epochs: int) -> list[float]:
    """A small model fitted with the pipeline's backup callback; the losses of the epochs run."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 4)), rng.random((16, 1))
    history = model.fit(x, y, epochs=epochs, callbacks=[backup.backup_callback(backup_dir)],
                        verbose=0)
    return history.history["loss"]


@pytest.fixture
def backed_up(tmp_path: Path) -> Path:
    """A backup after 3 of 5 epochs: latest = epoch 3, the previous copy = epoch 2."""
    folder = tmp_path / "backup"
    fit(folder, 3)
    (folder / "history.csv").write_text("epoch,loss\n1,1\n2,1\n3,1\n")
    (folder / "mlflow_run_id").write_text("abc")
    assert backup.recover(folder) == 3
    return folder


def test_intact_backup_resumes_at_its_epoch(backed_up: Path) -> None:
    assert len(fit(backed_up, 5)) == 2  # epochs 4 and 5 only


@pytest.mark.parametrize("broken", ["latest.weights.h5", "training_metadata.json"])
def test_cut_short_backup_resumes_from_the_previous_copy(
    backed_up: Path, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    truncate(backed_up / broken)
    with caplog.at_level(logging.WARNING):
        assert backup.recover(backed_up) == 2
    (line,) = [r.getMessage() for r in caplog.records]
    assert str(backed_up) in line and broken in line and "previous copy" in line
    assert "at epoch 2" in line
    assert backup.state_epoch(backed_up / backup.WEIGHTS, backed_up / backup.METADATA)[0] == 2
    assert len(fit(backed_up, 5)) == 3  # epochs 3 (again), 4 and 5: Keras loads it


def test_both_copies_cut_short_start_over_with_one_line(
    backed_up: Path, caplog: pytest.LogCaptureFixture
) -> None:
    truncate(backed_up / "latest.weights.h5")
    truncate(backed_up / "latest.weights.h5.bkp")
    with caplog.at_level(logging.WARNING):
        assert backup.recover(backed_up) == 0
    (line,) = [r.getMessage() for r in caplog.records]
    assert "starting the training over from epoch 1" in line and "truncated" in line
    # The epochs' files are gone (a fresh history), the MLflow run id is kept (same run).
    assert sorted(p.name for p in backed_up.iterdir()) == ["mlflow_run_id"]
    assert len(fit(backed_up, 5)) == 5


def test_a_kill_before_the_first_backup_is_a_fresh_start(tmp_path: Path) -> None:
    assert backup.recover(tmp_path) == 0


def _wait_for_backups(root: Path, proc: subprocess.Popen[str], epochs: int) -> Path:
    """The backup folder once its latest state holds `epochs` (and so a previous copy)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for meta in root.glob("models/.train-backup/*/training_metadata.json"):
            try:
                if json.loads(meta.read_text())["epoch"] >= epochs:
                    return meta.parent
            except (ValueError, KeyError, OSError):
                pass  # being written
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be interrupted:\n{proc.stdout.read()}")
        time.sleep(0.05)
    pytest.fail("no backup in time")


@pytest.mark.slow
def test_train_stage_resumes_after_its_backup_was_cut_short(tmp_path: Path) -> None:
    make_split(tmp_path)
    write_params(tmp_path, train__epochs=4)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.train"], cwd=tmp_path, env=stage_env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        folder = _wait_for_backups(tmp_path, proc, 2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    killed_after = json.loads((folder / "training_metadata.json").read_text())["epoch"]
    prev = json.loads((folder / "training_metadata.json.bkp").read_text())["epoch"]
    assert killed_after < 4 and prev == killed_after - 1
    truncate(folder / "latest.weights.h5")

    again = run_stage(tmp_path, "train", timeout=600)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    assert f"resuming from its previous copy instead, at epoch {prev}" in log
    assert f"resuming from epoch {prev}" in log
    assert f"Epoch {prev + 1}/4" in log and f"Epoch {prev}/4" not in log
    history = pd.read_csv(tmp_path / "metrics/train_history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert not folder.exists()  # finished: the resume state is removed


def test_weights_an_epoch_ahead_of_the_metadata_resume_from_the_previous_pair(
    backed_up: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A kill between Keras' two writes of epoch 3: the weights (and optimizer) hold 3 epochs of
    # steps, the metadata still says epoch 2. Resuming from both trained epoch 3 twice.
    (backed_up / backup.METADATA).write_text(json.dumps({"epoch": 2, "batch": 0}))
    assert backup.optimizer_steps(backed_up / backup.WEIGHTS) == 3  # 16 rows, 1 step per epoch
    with caplog.at_level(logging.WARNING):
        assert backup.recover(backed_up, steps_per_epoch=1) == 2
    (line,) = [r.getMessage() for r in caplog.records]
    assert "holds 3 optimizer steps" in line and "says epoch 2" in line and "at epoch 2" in line
    assert backup.optimizer_steps(backed_up / backup.WEIGHTS) == 2  # the previous pair
    assert backup.state_epoch(backed_up / backup.WEIGHTS, backed_up / backup.METADATA, 1) == (
        2, "")
    assert len(fit(backed_up, 5)) == 3  # epochs 3, 4 and 5


def _fit_dropout(backup_dir: Path, epochs: int) -> list[np.ndarray]:
    """A model with Dropout, fitted with the backup and the random-state callback; its weights."""
    import keras

    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                              keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 4)), rng.random((32, 1))
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, shuffle=False,
              callbacks=[backup.rng_callback(backup_dir), backup.backup_callback(backup_dir)])
    return [np.array(w) for w in model.weights]


def test_a_resumed_run_with_dropout_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    whole = _fit_dropout(tmp_path / "whole", 4)
    _fit_dropout(tmp_path / "cut", 2)  # "killed" after epoch 2
    assert backup.recover(tmp_path / "cut", steps_per_epoch=4) == 2
    resumed = _fit_dropout(tmp_path / "cut", 4)
    for a, b in zip(whole, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    # Without the saved state the dropout masks after the resume differ (the test can fail).
    for f in (tmp_path / "cut").glob("rng_state.*.npz"):
        f.unlink()
    _fit_dropout(tmp_path / "cut2", 2)
    for f in (tmp_path / "cut2").glob("rng_state.*.npz"):
        f.unlink()
    other = _fit_dropout(tmp_path / "cut2", 4)
    assert any(not np.array_equal(a, b) for a, b in zip(whole, other, strict=True))
