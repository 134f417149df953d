"""Stage `split`: carve a validation set out of the training images, grouped by patient.

The training pool is the official training images plus the generated ones (balanced.csv). A
fraction `split.val_fraction` of each label goes to validation, with every group's images on one
side only. A group is a patient, joined with every other patient that shares a byte-identical
image (same source sha256: the Kaggle copy has 30 such groups, some under two patient ids), and
every generated image belongs to its source's patient. The official test set is copied through
untouched. Writes data/split.csv — the contract the train and evaluate stages read — and
metrics/split.json.

`split.generated_in_val: true` (the paper's order, balance before split) splits the whole pool, so
validation holds generated NORMAL images too. `false` splits the original images only: validation
is all originals, a generated image goes to train with its source's group, and one whose source's
group is in validation is left out (in train it would be a distorted copy of a validation image).

`task: three_class` stratifies by class (normal / bacteria / virus) instead of by label, so each
cause gets its share of validation images; split.json then adds `class_counts`.

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
from pneumonia.files import spreadsheet_safe_frame, write_metrics
from pneumonia.params import Params
from pneumonia.paths import (
    BALANCED_MANIFEST,
    CLASSES,
    LABELS,
    MANIFEST,
    SPLIT_CSV,
    SPLIT_JSON,
)

log = logging.getLogger(__name__)

# png_sha256 (the hash of each image file) makes split.csv a fingerprint of every image it
# lists: train and evaluate depend on it instead of on the image folders (see dvc.yaml).
SPLIT_COLUMNS = [
    "image_id", "path", "label", "class", "patient_id", "subset", "source_image_id", "png_sha256",
]
SUBSETS = ("train", "val", "test")


def assign_validation(
    pool: pd.DataFrame, val_fraction: float, seed: int, group: str = "patient_id",
    strata: str = "label", values: tuple[str, ...] = LABELS,
) -> set[str]:
    """Groups (values of column `group`, default patients) of `pool` that go to validation.

    Each stratum (a value of column `strata`: the label, or for `task: three_class` the class
    normal / bacteria / virus) gets round(val_fraction * its image count) validation images, as
    closely as whole groups allow. A group with images of several strata is placed with its
    majority stratum and only taken if it fits every stratum's target.
    """
    per_group = pool.groupby([group, strata]).size().unstack(fill_value=0)
    per_group = per_group.reindex(columns=list(values), fill_value=0).sort_index()
    totals = per_group.sum()
    targets = {lbl: round(val_fraction * int(totals[lbl])) for lbl in values}
    taken = Counter({lbl: 0 for lbl in values})
    chosen: set[str] = set()
    majority = per_group.idxmax(axis=1)  # ties -> first value in `values` order
    for label in values:
        groups = sorted(majority.index[majority == label])
        random.Random(f"{seed}:{label}").shuffle(groups)  # str seeds are stable across runs
        for g in groups:
            counts = per_group.loc[g]
            if all(taken[lbl] + int(counts[lbl]) <= targets[lbl] for lbl in values):
                chosen.add(g)
                for lbl in values:
                    taken[lbl] += int(counts[lbl])
    return chosen


def patient_groups(images: pd.DataFrame) -> tuple[dict[str, str], int]:
    """Union-find over patient ids, linked by byte-identical images (same `sha256`).

    Returns ({patient_id: group id}, number of identical-image sets that link two or more
    patient ids). The group id is the smallest patient id of the group (stable across runs).
    """
    parent = {pid: pid for pid in images.patient_id}

    def find(pid: str) -> str:
        while parent[pid] != pid:
            parent[pid] = parent[parent[pid]]
            pid = parent[pid]
        return pid

    links = 0
    for _, patients in images.groupby("sha256").patient_id:
        ids = sorted(set(patients))
        if len(ids) > 1:
            links += 1
            for other in ids[1:]:
                a, b = find(ids[0]), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return {pid: find(pid) for pid in parent}, links


def split_pool(
    originals: pd.DataFrame, generated: pd.DataFrame, val_fraction: float, seed: int,
    generated_in_val: bool = True, task: str = "binary",
) -> tuple[pd.DataFrame, dict]:
    """Assign `subset` (train | val) to the training pool: original training images (with their
    source `sha256`) and generated ones (`source_image_id` set, their source's `patient_id`).
    Stratified by label (`task: binary`) or by class (`three_class`: normal / bacteria / virus).

    Returns (the pool's rows that are kept, with `subset` and `group`; facts for split.json).
    """
    groups, links = patient_groups(originals)
    pool = pd.concat([originals, generated], ignore_index=True)
    pool["group"] = pool.patient_id.map(groups)
    if pool.group.isna().any():  # a generated image whose patient has no original: impossible
        raise PipelineError("internal error: a generated image's patient has no original image.")
    is_generated = pool.source_image_id != ""
    basis = pool if generated_in_val else pool[~is_generated]
    strata = {"strata": "class", "values": CLASSES} if task == "three_class" else {}
    val_groups = assign_validation(basis, val_fraction, seed, group="group", **strata)
    in_val = pool.group.isin(val_groups)
    pool["subset"] = in_val.map({True: "val", False: "train"})
    # generated_in_val false: a generated image whose source's group is in validation.
    left_out = is_generated & in_val & (not generated_in_val)
    facts = {
        "generated_left_out": int(left_out.sum()),
        "identical_image_sets": int((originals.groupby("sha256").size() > 1).sum()),
        "identical_image_sets_linking_patients": links,
    }
    return pool[~left_out].reset_index(drop=True), facts


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
    pool, facts = split_pool(
        originals[originals.split == "train"], generated.assign(sha256=""),
        params.split.val_fraction, params.split.seed, params.split.generated_in_val, params.task)
    _check_every_class_in(pool, params)
    test = originals[originals.split == "test"].assign(subset="test")

    full = pd.concat([pool, test], ignore_index=True)
    split = full[SPLIT_COLUMNS]
    order = {s: i for i, s in enumerate(SUBSETS)}
    split = split.sort_values(["subset", "label", "image_id"], key=lambda c: c.map(order)
                              if c.name == "subset" else c, ignore_index=True)
    SPLIT_CSV.parent.mkdir(parents=True, exist_ok=True)
    spreadsheet_safe_frame(split).to_csv(SPLIT_CSV, index=False, lineterminator="\n")

    metrics = _metrics(split) | facts | {"generated_in_val": params.split.generated_in_val}
    if params.task == "three_class":  # binary runs keep split.json as it was
        metrics["task"] = params.task
        metrics["class_counts"] = {
            s: {c: int(((split.subset == s) & (split["class"] == c)).sum()) for c in CLASSES}
            for s in SUBSETS}
    metrics["identical_images_in_train_and_val"] = _shared_hashes(pool)
    # Cannot happen by construction; guard the contract.
    if metrics["patients_in_train_and_val"] or metrics["identical_images_in_train_and_val"]:
        raise PipelineError("internal error: a patient or an image ended up in both train and "
                            "val.")
    write_metrics(metrics, SPLIT_JSON)  # headline; details/split.json: all
    log.info("split: train %d, val %d (%.1f %%), test %d", metrics["counts"]["train"]["total"],
             metrics["counts"]["val"]["total"], 100 * metrics["val_fraction"],
             metrics["counts"]["test"]["total"])
    return metrics


def _check_every_class_in(pool: pd.DataFrame, params: Params) -> None:
    """Refuse a train or validation set without an image of NORMAL or PNEUMONIA (issue 35): the
    epoch, the threshold and the conformal sets are chosen on validation, which then cannot
    measure that label. validate has checked that the training images hold every label; whole
    patient groups and rounding can still leave validation without one. With `task: three_class`
    a validation set without a cause (bacteria / virus) is logged as a warning only: every choice
    made on validation is a binary one, and a small dataset (the bundled sample has two viral
    patients) could not be split at all."""
    columns = [("label", LABELS)] + ([("class", CLASSES)] if params.task == "three_class" else [])
    for subset, name in (("val", "validation"), ("train", "training")):
        for column, wanted in columns:
            present = set(pool[column][pool.subset == subset])
            missing = [c for c in wanted if c not in present]
            if not missing:
                continue
            counts = ", ".join(f"{c} {int((pool[column] == c).sum())}" for c in wanted)
            larger = min(0.5, round(params.split.val_fraction + 0.1, 2))
            message = (f"split: the {name} set has no {' or '.join(missing)} image ({column} "
                       f"counts of the training pool: {counts}; split.val_fraction "
                       f"{params.split.val_fraction}, whole patients only)")
            if column == "class" and subset == "val":  # a cause: warned, see the docstring
                log.warning("%s: its validation metrics for that cause are undefined.", message)
                continue
            raise PipelineError(
                f"{message}: raise split.val_fraction (e.g. `dvc exp run -S "
                f"split.val_fraction={larger}`) or add images of that class.")


def _shared_hashes(pool: pd.DataFrame) -> int:
    """Source sha256 values found among both the train and the val originals."""
    orig = pool[pool.source_image_id == ""]
    return len(set(orig.sha256[orig.subset == "train"]) & set(orig.sha256[orig.subset == "val"]))


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
        "val_original_images": int(((split.subset == "val") & (split.source_image_id == "")).sum()),
        "patients_in_train_and_val": len(patients["train"] & patients["val"]),
    }

