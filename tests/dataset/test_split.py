"""Split: stratified by label, grouped by patient, generated images follow their source."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pneumonia.dataset import balance, ingest, split
from pneumonia.errors import PipelineError
from pneumonia.paths import BALANCED_MANIFEST, SPLIT_CSV, SPLIT_JSON
from tests.conftest import make_params, tree_hashes


def _check_contract(s: pd.DataFrame, manifest: pd.DataFrame) -> None:
    assert list(s.columns) == split.SPLIT_COLUMNS
    train, val = s[s.subset == "train"], s[s.subset == "val"]
    assert not set(train.patient_id) & set(val.patient_id)
    # Each generated image sits where its source sits.
    where = s.set_index("image_id").subset
    gen = s[s.source_image_id != ""]
    assert (gen.subset.to_numpy() == where.loc[gen.source_image_id].to_numpy()).all()
    # The official test set is passed through untouched.
    test = s[s.subset == "test"].set_index("image_id").sort_index()
    official = manifest[manifest.split == "test"].set_index("image_id").sort_index()
    assert list(test.index) == list(official.index)
    assert (test.path == official.path).all() and (test.label == official.label).all()


def test_sample_split(workdir: Path, mini_raw: Path) -> None:
    params = make_params(mini_raw, balance={"target_normal": 16})
    ingest.run(params)
    balance.run(params)
    metrics = split.run(params)
    s = pd.read_csv(SPLIT_CSV, keep_default_na=False)
    manifest = pd.read_csv("data/manifest.csv", keep_default_na=False)
    _check_contract(s, manifest)
    assert len(s) == len(manifest) + len(pd.read_csv(BALANCED_MANIFEST))
    assert metrics["patients_in_train_and_val"] == 0
    assert metrics["counts"]["val"]["total"] > 0
    assert json.loads(SPLIT_JSON.read_text()) == metrics
    order = {"train": 0, "val": 1, "test": 2}
    keys = list(zip(s.subset.map(order), s.label, s.image_id, strict=True))
    assert keys == sorted(keys)
    first = tree_hashes(SPLIT_CSV, SPLIT_JSON)
    split.run(params)
    assert tree_hashes(SPLIT_CSV, SPLIT_JSON) == first


def test_assign_validation_hits_targets_and_keeps_patients_whole() -> None:
    rows = []
    for p in range(300):  # patients with 1..4 images, a NORMAL and a PNEUMONIA population
        label = "NORMAL" if p % 3 == 0 else "PNEUMONIA"
        rows += [{"patient_id": f"p{p}", "label": label}] * (1 + p % 4)
    pool = pd.DataFrame(rows)
    chosen = split.assign_validation(pool, 0.2, seed=1)
    val = pool[pool.patient_id.isin(chosen)]
    for label in ("NORMAL", "PNEUMONIA"):
        n, n_val = (pool.label == label).sum(), (val.label == label).sum()
        assert abs(n_val - round(0.2 * n)) <= 1
    assert split.assign_validation(pool, 0.2, seed=1) == chosen
    assert split.assign_validation(pool, 0.2, seed=2) != chosen


def test_balanced_csv_from_elsewhere_is_refused(workdir: Path, mini_raw: Path) -> None:
    params = make_params(mini_raw, balance={"target_normal": 16})
    ingest.run(params)
    balance.run(params)
    b = pd.read_csv(BALANCED_MANIFEST, keep_default_na=False)
    b.loc[0, "source_image_id"] = "IM-9999-0001"
    b.to_csv(BALANCED_MANIFEST, index=False)
    with pytest.raises(PipelineError, match="re-run the balance stage"):
        split.run(params)


def test_full_dataset(full_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(full_project)
    metrics = json.loads(SPLIT_JSON.read_text())
    s = pd.read_csv(SPLIT_CSV, keep_default_na=False)
    _check_contract(s, pd.read_csv("data/manifest.csv", keep_default_na=False))
    c = metrics["counts"]
    assert c["train"]["NORMAL"] + c["val"]["NORMAL"] == 3849
    assert c["train"]["PNEUMONIA"] + c["val"]["PNEUMONIA"] == 3883
    assert c["test"] == {"NORMAL": 234, "PNEUMONIA": 390, "total": 624}
    assert abs(metrics["val_fraction"] - 0.2) <= 0.01
    assert abs(metrics["normal_share"]["train"] - metrics["normal_share"]["val"]) <= 0.01
    assert metrics["patients_in_train_and_val"] == 0
    assert metrics["generated"]["train"] + metrics["generated"]["val"] == 2500


def _pool(n_patients: int = 60) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Original training images (1-3 per patient, a third NORMAL) and generated NORMAL images
    (one per NORMAL original), as split_pool takes them."""
    rows, gen = [], []
    for p in range(n_patients):
        label = "NORMAL" if p % 3 == 0 else "PNEUMONIA"
        for k in range(1 + p % 3):
            image_id = f"p{p:03d}-{k}"
            rows.append({"image_id": image_id, "patient_id": f"p{p:03d}", "label": label,
                         "sha256": f"h-{image_id}", "source_image_id": ""})
            if label == "NORMAL":
                gen.append({"image_id": f"{image_id}_aug00", "patient_id": f"p{p:03d}",
                            "label": label, "sha256": "", "source_image_id": image_id})
    return pd.DataFrame(rows), pd.DataFrame(gen)


def test_byte_identical_images_of_different_patients_stay_on_one_side() -> None:
    """Two patient ids holding the same file (same source sha256) are one group: with patient-only
    grouping some seeds put the copies on both sides; with the hash links no seed does."""
    originals, generated = _pool()
    # p001's image is byte-identical to p004's and p007's first image: one group of 3 patients.
    for pid in ("p004", "p007"):
        originals.loc[originals.image_id == f"{pid}-0", "sha256"] = "h-p001-0"
    groups, links = split.patient_groups(originals)
    assert links == 1
    assert groups["p001"] == groups["p004"] == groups["p007"] == "p001"
    assert len(set(groups.values())) == 60 - 2

    separated_by_patient_only = 0
    for seed in range(30):
        by_patient = split.assign_validation(pd.concat([originals, generated]), 0.2, seed)
        separated_by_patient_only += len({p in by_patient for p in ("p001", "p004", "p007")}) > 1
        pool, facts = split.split_pool(originals, generated, 0.2, seed)
        sides = pool[pool.source_image_id == ""].groupby("sha256").subset.nunique()
        assert sides.max() == 1, seed  # never an identical image on both sides
        assert facts["identical_image_sets_linking_patients"] == 1
        assert facts["identical_image_sets"] == 1
        assert split._shared_hashes(pool) == 0
    assert separated_by_patient_only > 0  # the construction does exercise the links


def test_generated_images_kept_out_of_validation() -> None:
    originals, generated = _pool(90)
    paper, facts_paper = split.split_pool(originals, generated, 0.2, 1, generated_in_val=True)
    assert (paper[paper.subset == "val"].source_image_id != "").any()  # paper order: some
    assert facts_paper["generated_left_out"] == 0 and len(paper) == len(originals) + len(generated)

    pool, facts = split.split_pool(originals, generated, 0.2, 1, generated_in_val=False)
    val, train = pool[pool.subset == "val"], pool[pool.subset == "train"]
    assert (val.source_image_id == "").all() and len(val) > 0  # validation: originals only
    assert (val.label == "NORMAL").any()
    # No generated image in train comes from a validation image (or its group).
    assert not set(train.source_image_id[train.source_image_id != ""]) & set(val.image_id)
    assert not set(train.group) & set(val.group)
    left_out = set(generated.image_id) - set(pool.image_id)
    assert facts["generated_left_out"] == len(left_out) > 0
    sources = generated.set_index("image_id").source_image_id
    assert {sources[i] for i in left_out} <= set(val.image_id)
    # Validation is ~val_fraction of the original images of each label.
    for label in ("NORMAL", "PNEUMONIA"):
        n = (originals.label == label).sum()
        assert abs((val.label == label).sum() - round(0.2 * n)) <= 3


def test_sample_split_without_generated_in_val(workdir: Path, mini_raw: Path) -> None:
    params = make_params(mini_raw, balance={"target_normal": 16},
                         split={"generated_in_val": False})
    ingest.run(params)
    balance.run(params)
    metrics = split.run(params)
    s = pd.read_csv(SPLIT_CSV, keep_default_na=False)
    assert metrics["generated"]["val"] == 0 and metrics["generated_in_val"] is False
    assert (s[s.subset == "val"].source_image_id == "").all()
    assert metrics["val_original_images"] == metrics["counts"]["val"]["total"] > 0
    assert metrics["identical_images_in_train_and_val"] == 0
    assert (metrics["generated"]["train"] + metrics["generated_left_out"]
            == len(pd.read_csv(BALANCED_MANIFEST)))


@pytest.mark.parametrize("generated_in_val", [True, False])
def test_validation_set_without_a_class_is_refused_naming_it(
        workdir: Path, mini_raw: Path, generated_in_val: bool) -> None:
    # 7 NORMAL and 7 PNEUMONIA originals: a 5 % validation set rounds to no image of a class;
    # training would then choose its epoch on a validation set that cannot measure that class.
    params = make_params(mini_raw, balance={"target_normal": 16},
                         split={"val_fraction": 0.05, "generated_in_val": generated_in_val})
    ingest.run(params)
    balance.run(params)
    with pytest.raises(PipelineError, match=r"the validation set has no (NORMAL or )?PNEUMONIA "
                                            r"image.*split.val_fraction"):
        split.run(params)
    assert not SPLIT_CSV.exists()  # nothing half-made for train to read
