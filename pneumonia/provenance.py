"""Which data a model was trained on: the bundled sample, the full Kermany dataset, or other data.

A model trained on the 284-image sample in data/sample/ (what `make demo` trains) proves the
pipeline works and nothing else, so it is labelled wherever it travels:

- the train stage computes the provenance from data/manifest.csv and writes it into the logged
  pyfunc model (MLmodel `metadata` and `model_config`, so the served model sees it) and the run's
  tags; the evaluate stage writes it as tags of the registered version (`provenance.*`);
- `pneumonia predict`, `pneumonia explain` and the served model's answer warn when the model was
  trained on the sample (`warning`);
- the champion gate (pneumonia.gate) never lets a sample-trained model displace a champion
  trained on other data.

The dataset is named from the manifest's content, not from the folder name alone:

- ``sample``: every source file is one of the bundled sample's files (same sha256), i.e. the
  sample or a part of it, wherever it was copied to;
- ``full``: the Table I counts of the Kermany release per official split and label (5856 images;
  the files' encodings differ between copies, so their content is not checked);
- ``other``: anything else (own data, a subset of the full dataset).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pneumonia.files import sha256_file
from pneumonia.paths import MANIFEST, TABLE1

SAMPLE_ROOT = Path("data/sample/chest_xray")  # in git: present in every clone and DVC temp copy
SAMPLE, FULL, OTHER, UNKNOWN = "sample", "full", "other", "unknown"
TAG_PREFIX = "provenance."
KEYS = ("dataset", "images", "image_size", "data_raw", "manifest_sha256", "train_run_id")


def sample_hashes(root: Path = SAMPLE_ROOT) -> set[str]:
    """sha256 of every file of the bundled sample (empty when the folder is absent)."""
    if not root.is_dir():
        return set()
    return {sha256_file(p) for p in root.rglob("*") if p.is_file() and p.suffix != ".md"}


def manifest_fingerprint(manifest: Any) -> str:
    """sha256 over the manifest's sorted (split, label, source sha256) rows: tells two copies of
    a dataset apart (or shows they are the same) without shipping the file."""
    rows = sorted(f"{s},{lbl},{h}" for s, lbl, h in
                  zip(manifest["split"], manifest["label"], manifest["sha256"], strict=True))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def classify(manifest: Any, sample_root: Path = SAMPLE_ROOT) -> str:
    """``sample`` / ``full`` / ``other`` for a manifest (data/manifest.csv's columns)."""
    hashes = set(manifest["sha256"].astype(str))
    # By content only: a folder named like the sample may hold anything (and the sample's files
    # are in git, so they are there wherever the pipeline runs).
    if hashes and hashes <= sample_hashes(sample_root):
        return SAMPLE
    counts = manifest.groupby(["split", "label"]).size().to_dict()
    if {k: int(v) for k, v in counts.items()} == TABLE1:
        return FULL
    return OTHER


def describe(data_raw: str, image_size: int, train_run_id: str | None = None,
             manifest_path: Path = MANIFEST) -> dict[str, str]:
    """The provenance of a model trained (or evaluated) on this workspace's data/manifest.csv:
    {dataset, images, image_size, data_raw, manifest_sha256[, train_run_id]}, all strings (they
    travel as MLflow tags)."""
    import pandas as pd

    manifest = pd.read_csv(manifest_path, dtype={"sha256": str})
    out = {
        "dataset": classify(manifest),
        "images": str(len(manifest)),
        "image_size": str(int(image_size)),
        "data_raw": str(data_raw),
        "manifest_sha256": manifest_fingerprint(manifest),
    }
    if train_run_id:
        out["train_run_id"] = train_run_id
    return out


def as_tags(provenance: dict[str, str]) -> dict[str, str]:
    """`provenance.<key>` tags (run or registered version)."""
    return {TAG_PREFIX + k: str(v) for k, v in provenance.items() if k in KEYS}


def from_tags(tags: dict[str, str] | None) -> dict[str, str]:
    """The provenance recorded as `provenance.*` tags ({} when none)."""
    return {k[len(TAG_PREFIX):]: v for k, v in (tags or {}).items()
            if k.startswith(TAG_PREFIX) and k[len(TAG_PREFIX):] in KEYS}


def dataset_of(provenance: dict[str, str] | None) -> str:
    """The provenance's dataset word; ``unknown`` when nothing was recorded (older models)."""
    value = (provenance or {}).get("dataset")
    return value if value in (SAMPLE, FULL, OTHER) else UNKNOWN


def warning(provenance: dict[str, str] | None) -> str | None:
    """The warning to show beside every answer of a model trained on the bundled sample."""
    if dataset_of(provenance) != SAMPLE:
        return None
    prov = provenance or {}
    size = prov.get("image_size", "?")
    run = f", run {prov['train_run_id']}" if prov.get("train_run_id") else ""
    return (f"this model was trained on the bundled sample ({prov.get('images', '?')} images, "
            f"{size} px{run}): a demo model that shows the pipeline works, not a usable "
            "classifier. Train on the full dataset (docs/reproducing.md) for real predictions.")
