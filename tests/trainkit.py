"""Helpers for the train/evaluate tests: a tiny, real project built from data/sample.

`make_project` decodes the real X-rays of data/sample/chest_xray (Kaggle layout), converts them to
grayscale 32-px PNGs (what the ingest stage would write), writes data/split.csv with the
split stage's columns and a params.yaml for a seconds-long training run. The stages then run in
that folder as DVC would run them in the repository root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "chest_xray"

TINY_PARAMS: dict[str, Any] = {
    "lr": 1e-3,
    "data": {"raw": "data/sample/chest_xray", "image_size": 32},
    "model": {
        "backbone": "densenet121",
        "weights": "none",
        "trainable_layers": 30,
        "dense_units": 16,
        "dropout": 0.2,
    },
    "train": {
        "epochs": 2,
        "batch_size": 48,  # 144 train images = 3 full batches, 36 val = 1: one trace each
        "seed": 7,
        "early_stopping_patience": 50,
        "reduce_lr_patience": 50,
    },
    "evaluate": {"threshold": 0.5, "batch_size": 128},  # 104 test images, one batch
}


def _patient_and_class(stem: str, label: str) -> tuple[str, str]:
    """Kaggle file names: person<N>_<bacteria|virus>_<k>, IM-<p>-<k>, NORMAL2-IM-<p>-<k>."""
    if label == "NORMAL":
        return stem.rsplit("-", 1)[0], "normal"
    m = re.match(r"(person\d+)_(bacteria|virus)", stem)
    assert m, stem
    return m.group(1), m.group(2)


def make_split(root: Path, size: int = 32, val_every: int = 5) -> pd.DataFrame:
    """Write root/data/images/*.png, root/data/split.csv and root/data/manifest.csv from the
    real sample images.

    Kaggle's train folder gives train + val (every `val_every`-th patient to val, so no patient
    is in both); Kaggle's val and test folders give the test subset.
    """
    from PIL import Image

    images = root / "data" / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for folder in ("train", "val", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            for src in sorted((SAMPLE / folder / label).glob("*.jpeg")):
                image_id = f"{folder}-{src.stem}"
                out = images / f"{image_id}.png"
                with Image.open(src) as im:
                    im.convert("L").resize((size, size), Image.BILINEAR).save(out)
                patient, cls = _patient_and_class(src.stem, label)
                rows.append(
                    {
                        "image_id": image_id,
                        "path": out.relative_to(root).as_posix(),
                        "label": label,
                        "class": cls,
                        "patient_id": patient,
                        "subset": folder,
                        "source_image_id": "",  # an original (split.csv's contract)
                        "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                    }
                )
    df = pd.DataFrame(rows)
    df.loc[df["subset"] == "val", "subset"] = "test"
    # data/manifest.csv as ingest writes it (the columns evaluate reads: patients and source
    # hashes give the leak-free test subset); Kaggle's val folder is merged into test here.
    manifest = df.assign(split=df["subset"])[["image_id", "path", "label", "class", "patient_id",
                                              "split", "sha256"]]
    manifest.to_csv(root / "data" / "manifest.csv", index=False)
    df = df.drop(columns="sha256")
    patients = sorted(df.loc[df["subset"] == "train", "patient_id"].unique())
    val_patients = set(patients[::val_every])
    df.loc[(df["subset"] == "train") & df["patient_id"].isin(val_patients), "subset"] = "val"
    df = df.sort_values("image_id").reset_index(drop=True)
    df.to_csv(root / "data" / "split.csv", index=False)
    return df


def write_params(root: Path, **overrides: Any) -> dict[str, Any]:
    """Write root/params.yaml: TINY_PARAMS with dotted-key overrides (`train__epochs=3`)."""
    params = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = params
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def with_overrides(raw: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """A copy of the params dict `raw` with `dvc exp run -S key=value` overrides applied as DVC
    applies them (dotted keys into existing sections, each value parsed as YAML)."""
    applied = yaml.safe_load(yaml.safe_dump(raw))
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = applied
        for p in parents:
            node = node[p]
        node[leaf] = yaml.safe_load(value)
    return applied


def stage_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for a stage subprocess: a store in `root`, quiet TF, no DVC vars leaking."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_stage(
    root: Path, stage: str, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """Run `python -m stages.<stage>` in `root` like DVC does; return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=root,
        env=stage_env(root, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for_epoch(root: Path, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    """Block until the training in `proc` (run in `root`) has backed up a finished epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for meta in root.glob("models/.train-backup/*/training_metadata.json"):
            try:
                if json.loads(meta.read_text())["epoch"] >= 1:
                    return
            except (ValueError, KeyError, OSError):
                pass  # being written
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"training ended before it could be interrupted:\n{out[-3000:]}")
        time.sleep(0.05)
    pytest.fail("no epoch finished in time")


def commit_tiny_grid(repo: Path, git: Any) -> None:
    """The 4-run grid the grid tests queue (small_cnn x balancing on/off x seeds 1-2), committed."""
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["ablation"] = {"preset": "paper", "backbones": ["small_cnn"],
                       "balance_methods": ["augmentor", "none"], "freeze_batchnorm": [True],
                       "seeds": [1, 2]}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    git(repo, "commit", "-qam", "tiny grid")
