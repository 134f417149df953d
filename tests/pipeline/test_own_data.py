"""Your own X-rays through all six stages with real DVC: `dvc exp run -S data.layout=folders
-S data.raw=<a hospital-like tree>` (nested folders, odd names, DICOM, a patients CSV in which
one patient spans both class folders). ~2-3 min on 2 cores: slow."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.dataset.hospitalkit import N_PER_LABEL, SPANNING, make_hospital
from tests.pipeline.test_dvc import TINY, dvc, make_project


@pytest.mark.slow
def test_own_hospital_tree_runs_all_six_stages(tmp_path: Path) -> None:
    repo = make_project(tmp_path / "project", TINY)
    make_hospital(repo / "data" / "raw" / "hospital")  # data/raw/ is git-ignored
    proc = dvc(repo, "exp", "run", "-S", "data.layout=folders",
               "-S", "data.raw=data/raw/hospital", "-S", "data.metadata=patients.csv",
               "-S", "data.test_fraction=0.25", "-S", "balance.target_normal=24",
               "-S", "train.batch_size=8")
    log = proc.stdout + proc.stderr
    for stage in ("ingest", "validate", "balance", "split", "train", "evaluate"):
        assert f"Running stage '{stage}'" in log, log[-3000:]

    report = json.loads((repo / "data/ingest_report.json").read_text())
    assert report["layout"] == "folders" and report["images"] == 2 * N_PER_LABEL
    assert report["patient_ids"] == "data.metadata" and "drawn" in report["test_split"]
    assert json.loads((repo / "metrics/validation.json").read_text())["success"]

    split = pd.read_csv(repo / "data/split.csv", dtype=str, keep_default_na=False)
    assert set(split.subset) == {"train", "val", "test"}
    # Grouped by the CSV's patients: each patient (the one spanning both class folders too) on
    # one side of every split; generated images go with their source's patient.
    sides = split.groupby("patient_id").subset.nunique()
    assert (sides == 1).all(), sides[sides > 1]
    assert set(split.label[split.patient_id == SPANNING]) == {"NORMAL", "PNEUMONIA"}
    assert set(split.label[split.subset == "test"]) == {"NORMAL", "PNEUMONIA"}

    evaluation = json.loads((repo / "metrics/details/evaluate.json").read_text())
    test_images = int((split.subset == "test").sum())
    assert evaluation["NORMAL_support"] + evaluation["PNEUMONIA_support"] == test_images
    assert 0 <= evaluation["accuracy_ci_low"] <= evaluation["accuracy"] <= 1
