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
