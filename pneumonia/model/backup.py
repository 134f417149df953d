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


def state_epoch(weights: Path, metadata: Path) -> tuple[int | None, str]:
    """The epoch a (weights, metadata) pair of the backup holds, or (None, why it is unusable)."""
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
    return epoch, ""


def recover(backup_dir: Path) -> int:
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
    epoch, problem = state_epoch(weights, metadata)
    if epoch is not None:
        return epoch
    prev_weights = weights.with_name(weights.name + PREVIOUS)
    prev_metadata = metadata.with_name(metadata.name + PREVIOUS)
    prev_epoch, prev_problem = state_epoch(prev_weights, prev_metadata)
    if prev_epoch is not None:
        log.warning(
            "training backup %s: %s (cut short by a kill while it was being saved?): resuming "
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
    return 0
