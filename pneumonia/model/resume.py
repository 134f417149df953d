"""What lets a killed training run resume: the resume key (params, split.csv and the train
stage's code, hashed), and the per-epoch history that survives a restart."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from pneumonia.code_closure import import_closure
from pneumonia.params import Params

if TYPE_CHECKING:
    import keras

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")
# The repository root of the code that runs (pneumonia/model/resume.py -> ../../..).
CODE_ROOT = Path(__file__).resolve().parents[2]


def resume_key(params: Params, split_sha256: str, code_sha256: str = "") -> str:
    """Short hash of everything that shapes training — params, split.csv and the training code
    — so only an identical run resumes (a backup made by older code is never continued)."""
    relevant = {
        "lr": params.lr,
        "image_size": params.data.image_size,
        "model": asdict(params.model),
        "train": asdict(params.train),
        "balance_method": params.balance.method,  # class_weight changes the loss
        "task": params.task,  # the head and the loss
        "split_sha256": split_sha256,
        "code_sha256": code_sha256,
    }
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def code_files(root: Path = CODE_ROOT, module: str = "stages.train") -> list[Path]:
    """The project files `python -m <module>` imports: the same closure dvc.yaml lists as the
    stage's deps (pneumonia.code_closure; tests/pipeline/test_layout.py)."""
    return import_closure(root, module)


def code_digest(root: Path = CODE_ROOT) -> str:
    """sha256 over the training code (path and bytes of every file in `code_files`)."""
    h = hashlib.sha256()
    for f in code_files(root):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def read_history(path: Path) -> list[dict[str, float]]:
    """Per-epoch rows of the history CSV, one per epoch (the last written wins: an epoch
    re-run after a kill replaces the interrupted attempt), sorted by epoch."""
    if not path.is_file():
        return []
    rows: dict[int, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                parsed = {k: float(row[k]) for k in HISTORY_COLUMNS}
            except (KeyError, TypeError, ValueError):
                continue  # a line cut short by a kill
            rows[int(parsed["epoch"])] = parsed
    return [rows[e] | {"epoch": e} for e in sorted(rows)]


def write_history(rows: list[dict[str, float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def history_callback(path: Path) -> keras.callbacks.Callback:
    """Append one CSV row per finished epoch (flushed to disk before the epoch's backup)."""
    import keras

    class EpochHistory(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            # The rate used *during* the epoch (ReduceLROnPlateau changes it at the epoch's end).
            self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            row = {"epoch": epoch + 1, "lr": self._lr}
            row |= {k: float(logs.get(k, math.nan)) for k in HISTORY_COLUMNS[1:5]}
            new = not path.exists()
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
                if new:
                    writer.writeheader()
                writer.writerow(row)
                f.flush()
                os.fsync(f.fileno())

    return EpochHistory()
