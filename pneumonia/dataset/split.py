"""Stage `split`: carve a validation set out of the training images, grouped by patient.

The training pool is the official training images plus the generated ones (balanced.csv). A
fraction `split.val_fraction` of each label goes to validation, with every patient's images (and
every generated image, which belongs to its source's patient) on one side only. The official test
set is copied through untouched. Writes data/split.csv — the contract the train and evaluate stages
read — and metrics/split.json.

Method: per label, the patients are shuffled (seeded by split.seed and the label) and taken into
validation greedily while they fit under that label's target count. With thousands of small patient
groups this hits the targets to within a few images, so the validation share and the NORMAL share
of train and validation match to well under 1 %.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.files import write_json
from pneumonia.params import Params
from pneumonia.paths import BALANCED_MANIFEST, LABELS, MANIFEST, SPLIT_CSV, SPLIT_JSON

log = logging.getLogger(__name__)

# png_sha256 (the hash of each image file) makes split.csv a fingerprint of every image it
# lists: train and evaluate depend on it instead of on the image folders (see dvc.yaml).
SPLIT_COLUMNS = [
    "image_id", "path", "label", "class", "patient_id", "subset", "source_image_id", "png_sha256",
]
SUBSETS = ("train", "val", "test")


def assign_validation(pool: pd.DataFrame, val_fraction: float, seed: int) -> set[str]:
    """Patients of `pool` (training images) that go to validation.

    Each label gets round(val_fraction * its image count) validation images, as closely as whole
    patients allow. A patient with images of several labels is placed with its majority label and
    only taken if it fits every label's target.
    """
    per_patient = pool.groupby(["patient_id", "label"]).size().unstack(fill_value=0)
    per_patient = per_patient.reindex(columns=list(LABELS), fill_value=0).sort_index()
    totals = per_patient.sum()
    targets = {lbl: round(val_fraction * int(totals[lbl])) for lbl in LABELS}
    taken = Counter({lbl: 0 for lbl in LABELS})
    chosen: set[str] = set()
    majority = per_patient.idxmax(axis=1)  # ties -> first label in LABELS order
    for label in LABELS:
        patients = sorted(majority.index[majority == label])
        random.Random(f"{seed}:{label}").shuffle(patients)  # str seeds are stable across runs
        for patient in patients:
            counts = per_patient.loc[patient]
            if all(taken[lbl] + int(counts[lbl]) <= targets[lbl] for lbl in LABELS):
                chosen.add(patient)
                for lbl in LABELS:
                    taken[lbl] += int(counts[lbl])
    return chosen


def run(params: Params) -> dict:
    """Run the split stage in the current directory; return metrics/split.json's content."""
    for path in (MANIFEST, BALANCED_MANIFEST):
        if not path.is_file():
            raise PipelineError(f"{path} not found: run the earlier stages first (dvc repro).")
    read = {"dtype": str, "keep_default_na": False}
    manifest = pd.read_csv(MANIFEST, **read)
    generated = pd.read_csv(BALANCED_MANIFEST, **read)
    unknown = set(generated.source_image_id) - set(manifest.image_id[manifest.split == "train"])
    if unknown:
        raise PipelineError(
            f"{BALANCED_MANIFEST} names source images that are not training images of "
            f"{MANIFEST} (e.g. {min(unknown)}): re-run the balance stage."
        )

    originals = manifest.assign(source_image_id="")
    pool = pd.concat([originals[originals.split == "train"], generated], ignore_index=True)
    val_patients = assign_validation(pool, params.split.val_fraction, params.split.seed)
    pool["subset"] = pool.patient_id.map(lambda pid: "val" if pid in val_patients else "train")
    test = originals[originals.split == "test"].assign(subset="test")

    split = pd.concat([pool, test], ignore_index=True)[SPLIT_COLUMNS]
    order = {s: i for i, s in enumerate(SUBSETS)}
    split = split.sort_values(["subset", "label", "image_id"], key=lambda c: c.map(order)
                              if c.name == "subset" else c, ignore_index=True)
    SPLIT_CSV.parent.mkdir(parents=True, exist_ok=True)
    split.to_csv(SPLIT_CSV, index=False, lineterminator="\n")

    metrics = _metrics(split)
    if metrics["patients_in_train_and_val"]:  # cannot happen by construction; guard the contract
        raise PipelineError("internal error: a patient ended up in both train and val.")
    write_json(metrics, SPLIT_JSON)
    log.info("split: train %d, val %d (%.1f %%), test %d", metrics["counts"]["train"]["total"],
             metrics["counts"]["val"]["total"], 100 * metrics["val_fraction"],
             metrics["counts"]["test"]["total"])
    return metrics


def _metrics(split: pd.DataFrame) -> dict:
    counts = {}
    normal_share = {}
    for subset in SUBSETS:
        rows = split[split.subset == subset]
        counts[subset] = {lbl: int((rows.label == lbl).sum()) for lbl in LABELS}
        counts[subset]["total"] = len(rows)
        normal_share[subset] = round(counts[subset]["NORMAL"] / len(rows), 4) if len(rows) else 0.0
    n_train, n_val = counts["train"]["total"], counts["val"]["total"]
    patients = {s: set(split.patient_id[split.subset == s]) for s in SUBSETS}
    return {
        "counts": counts,
        "val_fraction": round(n_val / (n_train + n_val), 4) if n_train + n_val else 0.0,
        "normal_share": normal_share,
        "generated": {s: int(((split.subset == s) & (split.source_image_id != "")).sum())
                      for s in ("train", "val")},
        "patients_in_train_and_val": len(patients["train"] & patients["val"]),
    }

