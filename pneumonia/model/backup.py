"""The training backup in models/.train-backup/<key>/ and its check before training resumes.

Keras' BackupAndRestore rewrites `latest.weights.h5` in place at every epoch's end: a kill -9
while it writes leaves a truncated file, and every later resume failed on it with a raw h5py
`OSError: truncated file`. So the backup keeps two copies (`double_checkpoint=True`: before
each save Keras copies the last good state to `*.bkp`; one of the two is whole at any moment),
and `recover` checks them *before* the training input is built: the epoch the data pipeline
starts at must be the epoch Keras resumes at. (Keras 3.15 falls back to the `.bkp` copy by
itself too, but only inside fit() — after our dataset was built for the newer epoch — and
only for an unreadable weights file, not for a cut-short metadata file.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# File names of keras.callbacks.BackupAndRestore (Keras 3.15.1) in its backup_dir.
WEIGHTS = "latest.weights.h5"
METADATA = "training_metadata.json"
PREVIOUS = ".bkp"  # suffix of the previous epoch's copies (double_checkpoint=True)
# Our files in the same folder that describe epochs already run (train.py).
EPOCH_FILES = ("history.csv", "best.weights.h5", "finished.json")
# The random-generator states of the model (Dropout's SeedGenerator) after each epoch: Keras'
# weights file does not hold them, so a resumed run would draw other dropout masks than an
# uninterrupted one. One file per epoch, the last three kept (recover may go back one epoch).
RNG_STATE = "rng_state.{epoch}.npz"
# HDF5 dataset of the optimizer's step count in a Keras 3 `.weights.h5` (its first variable).
ITERATIONS = "optimizer/vars/0"


def backup_callback(backup_dir: Path) -> keras.callbacks.Callback:
    """BackupAndRestore with two copies of the last state, kept after fit (train.py removes
    the folder once the stage's outputs are saved and logged)."""
    import keras

    return keras.callbacks.BackupAndRestore(
        str(backup_dir), double_checkpoint=True, delete_checkpoint=False
    )


def weights_problem(path: Path) -> str | None:
    """Why the HDF5 weights file at `path` cannot be read back (None: every dataset reads).

    Opening alone is not enough: a file cut short can keep a valid header, so every dataset is
    read (about a second for DenseNet201's weights and optimizer state)."""
    import h5py

    def read(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            obj[()]

    try:
        with h5py.File(path, "r") as f:
            f.visititems(read)
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError...
        return f"{type(exc).__name__}: {exc}"
    return None


def optimizer_steps(path: Path) -> int | None:
    """The optimizer's step count stored in a Keras weights file (None: no optimizer state)."""
    import h5py

    with h5py.File(path, "r") as f:
        return int(f[ITERATIONS][()]) if ITERATIONS in f else None


def state_epoch(weights: Path, metadata: Path,
                steps_per_epoch: int | None = None) -> tuple[int | None, str]:
    """The epoch a (weights, metadata) pair of the backup holds, or (None, why it is unusable).

    With `steps_per_epoch`, the pair must also agree: Keras writes the weights, then the
    metadata, so a kill between the two leaves weights one epoch ahead of the epoch the
    metadata names (resuming from both trained that epoch twice, shifting the learning-rate
    schedule). The optimizer's step count must equal epoch x steps_per_epoch."""
    try:
        epoch = int(json.loads(metadata.read_text())["epoch"])
    except FileNotFoundError:
        return None, f"{metadata.name} is missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{metadata.name} is unreadable ({type(exc).__name__}: {exc})"
    if epoch < 1:
        return None, f"{metadata.name} holds epoch {epoch}"
    if not weights.is_file():
        return None, f"{weights.name} is missing"
    problem = weights_problem(weights)
    if problem:
        return None, f"{weights.name} is unreadable ({problem})"
    if steps_per_epoch:
        steps = optimizer_steps(weights)
        if steps is not None and steps != epoch * steps_per_epoch:
            return None, (f"{weights.name} holds {steps} optimizer steps "
                          f"({steps / steps_per_epoch:g} epochs of {steps_per_epoch} steps) but "
                          f"{metadata.name} says epoch {epoch} (a kill between the two writes?)")
    return epoch, ""


def recover(backup_dir: Path, steps_per_epoch: int | None = None) -> int:
    """Check the backup before training resumes from it; return the epochs it holds (0: start
    from the beginning).

    - the last state reads: resume from it;
    - it does not (cut short by a kill while being saved) but the previous copy does: put the
      previous copy in its place and resume one epoch earlier (that epoch is run again);
    - neither reads: say so, delete the backup's training files (not the MLflow run id: the
      same run continues) and start over.
    One warning line in the last two cases."""
    weights, metadata = backup_dir / WEIGHTS, backup_dir / METADATA
    if not weights.exists() and not metadata.exists():
        return 0  # a fresh start (or a kill before the first epoch ended)
    epoch, problem = state_epoch(weights, metadata, steps_per_epoch)
    if epoch is not None:
        return epoch
    prev_weights = weights.with_name(weights.name + PREVIOUS)
    prev_metadata = metadata.with_name(metadata.name + PREVIOUS)
    prev_epoch, prev_problem = state_epoch(prev_weights, prev_metadata, steps_per_epoch)
    if prev_epoch is not None:
        log.warning(
            "training backup %s: %s (a kill while it was being saved?): resuming "
            "from its previous copy instead, at epoch %d", backup_dir, problem, prev_epoch)
        for src, dst in ((prev_weights, weights), (prev_metadata, metadata)):
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)  # never a half-copied file in the place Keras reads
        return prev_epoch
    log.warning(
        "training backup %s: %s, and its previous copy is unusable too (%s): starting the "
        "training over from epoch 1", backup_dir, problem,
        prev_problem if prev_weights.exists() or prev_metadata.exists() else "there is none")
    for name in (WEIGHTS, METADATA, WEIGHTS + PREVIOUS, METADATA + PREVIOUS, *EPOCH_FILES):
        (backup_dir / name).unlink(missing_ok=True)
    for f in backup_dir.glob(RNG_STATE.format(epoch="*")):
        f.unlink()
    return 0


def _seed_states(model: keras.Model) -> list[keras.Variable]:
    """The state variables of the model's SeedGenerators (Dropout's), in a stable order."""
    return sorted((v for v in model.non_trainable_variables
                   if "seed_generator_state" in v.path), key=lambda v: v.path)


def rng_callback(backup_dir: Path) -> keras.callbacks.Callback:
    """Saves the model's random-generator states after each epoch (before BackupAndRestore,
    so the state of every epoch a backup can hold is on disk) and puts them back when fit
    resumes, so a resumed run draws the same dropout masks as an uninterrupted one."""
    import keras
    import numpy as np

    class RngState(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.restored = False

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            if self.restored:
                return
            self.restored = True  # the first epoch of this fit: epoch > 0 after a resume
            states = _seed_states(self.model)
            if epoch == 0 or not states:
                return
            saved = backup_dir / RNG_STATE.format(epoch=epoch)
            if not saved.is_file():
                log.warning("no random-generator state for epoch %d in %s: the dropout masks "
                            "of the resumed epochs differ from an uninterrupted run's",
                            epoch, backup_dir)
                return
            with np.load(saved) as f:
                for i, variable in enumerate(states):
                    variable.assign(f[f"s{i}"])

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            states = _seed_states(self.model)
            if not states:
                return
            backup_dir.mkdir(parents=True, exist_ok=True)
            tmp = backup_dir / ".rng_state.tmp.npz"
            np.savez(tmp, **{f"s{i}": np.array(v) for i, v in enumerate(states)})
            os.replace(tmp, backup_dir / RNG_STATE.format(epoch=epoch + 1))
            (backup_dir / RNG_STATE.format(epoch=epoch - 2)).unlink(missing_ok=True)

    return RngState()
