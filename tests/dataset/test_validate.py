"""Validate: the GX suite and the leakage checks, on small real datasets and the full one."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pneumonia.dataset import ingest, validate
from pneumonia.errors import PipelineError
from pneumonia.paths import MANIFEST, VALIDATION_JSON, VALIDATION_MD
from tests.conftest import make_params, tree_hashes


def _ingest_and_validate(raw: Path, **sections) -> dict:
    ingest.run(make_params(raw, **sections))
    return validate.run(make_params(raw, **sections))


def test_clean_sample_passes_and_is_deterministic(workdir: Path, mini_raw: Path) -> None:
    report = _ingest_and_validate(mini_raw)
    assert report["success"] and report["expectations_failed"] == 0
    assert report["expectations_evaluated"] >= 15
    names = {e["name"] for e in report["details"]["expectations"]}
    assert {"label_matches_class", "image_id_unique", "width_within_bounds"} <= names
    assert "table1_counts" not in names  # switched off for the mini dataset
    first = tree_hashes(VALIDATION_JSON, VALIDATION_MD)
    validate.run(make_params(mini_raw))
    assert tree_hashes(VALIDATION_JSON, VALIDATION_MD) == first
    assert "passed" in VALIDATION_MD.read_text()


def test_table1_counts_fail_on_a_subset(workdir: Path, mini_raw: Path) -> None:
    ingest.run(make_params(mini_raw))
    with pytest.raises(PipelineError, match=r"table1_counts: train/NORMAL 7 \(expected 1349\)"):
        validate.run(make_params(mini_raw, validate={"table1_counts": True}))
    saved = json.loads(VALIDATION_JSON.read_text())
    assert saved["success"] is False and saved["expectations_failed"] == 1


def test_tiny_image_fails_size_bounds_naming_it(workdir: Path, mini_raw: Path) -> None:
    src = next((mini_raw / "train" / "NORMAL").iterdir())
    with Image.open(src) as img:
        img.convert("L").resize((10, 10)).save(mini_raw / "train" / "NORMAL" / "IM-9201-0001.jpeg")
    with pytest.raises(PipelineError) as err:
        _ingest_and_validate(mini_raw)
    message = str(err.value)
    assert ("width_within_bounds: 1 row(s) out of range, e.g. image_id=IM-9201-0001 (10x10) "
            "from train/NORMAL/IM-9201-0001.jpeg") in message
    assert "validate.min_side" in message
    # The reports are written before failing, so the user can read them.
    saved = json.loads(VALIDATION_JSON.read_text())
    failed = {e["name"]: e for e in saved["details"]["expectations"] if not e["success"]}
    assert set(failed) == {"width_within_bounds", "height_within_bounds"}
    assert failed["width_within_bounds"]["examples"][0]["image_id"] == "IM-9201-0001"
    assert "FAILED" in VALIDATION_MD.read_text()
    # min_side is a param: lowering it accepts the image.
    assert validate.run(make_params(mini_raw, validate={"min_side": 8}))["success"]


def test_label_class_mismatch_fails(workdir: Path, mini_raw: Path) -> None:
    pneumonia = next((mini_raw / "train" / "PNEUMONIA").glob("*bacteria*"))
    shutil.move(pneumonia, mini_raw / "train" / "NORMAL" / pneumonia.name)
    with pytest.raises(PipelineError, match=f"label_matches_class: 1 row.*{pneumonia.stem}"):
        _ingest_and_validate(mini_raw)


def test_same_image_in_train_and_test_warns_or_fails(
    workdir: Path, mini_raw: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = min((mini_raw / "train" / "NORMAL").iterdir())
    shutil.copy(src, mini_raw / "test" / "NORMAL" / "IM-9301-0001.jpeg")
    report = _ingest_and_validate(mini_raw)
    assert report["success"]
    assert report["duplicate_groups_across_splits"] == 1
    group = report["details"]["leakage"]["examples"]["across_splits"][0]
    assert group["images"] == ["test/NORMAL/IM-9301-0001", f"train/NORMAL/{src.stem}"]
    assert "in both train and test" in caplog.text
    # evaluate's leak-free test subset uses the same finding, image by image
    leaks = validate.leaking_test_images(pd.read_csv(MANIFEST, dtype=str)).set_index("image_id")
    assert leaks.loc["IM-9301-0001", "duplicate_of_train"]
    assert not leaks.loc["IM-9301-0001", "leakfree"]
    assert int(leaks["duplicate_of_train"].sum()) == 1

    with pytest.raises(PipelineError, match="leakage: 1 group.*IM-9301-0001"):
        validate.run(make_params(mini_raw, validate={"leakage": "error"}))
    assert json.loads(VALIDATION_JSON.read_text())["success"] is False


def test_leaking_test_images_flags_both_kinds_of_leakage() -> None:
    manifest = pd.DataFrame({
        "image_id": ["a1", "a2", "b1", "t1", "t2", "t3", "t4"],
        "patient_id": ["pa", "pa", "pb", "pa", "pc", "pd", "pd"],
        "split": ["train", "train", "train", "test", "test", "test", "test"],
        "label": ["NORMAL"] * 7,
        "sha256": ["h1", "h2", "h3", "h9", "h3", "h4", "h4"],
    })
    leaks = validate.leaking_test_images(manifest).set_index("image_id")
    assert leaks["patient_in_train"].to_dict() == {"t1": True, "t2": False, "t3": False,
                                                   "t4": False}
    # t2 is train image b1's bytes; t3/t4 duplicate each other within test only: not leakage
    assert leaks["duplicate_of_train"].to_dict() == {"t1": False, "t2": True, "t3": False,
                                                     "t4": False}
    assert leaks["leakfree"].to_dict() == {"t1": False, "t2": False, "t3": True, "t4": True}
    found = validate.find_leakage(manifest)  # the stage's counts agree
    assert found["patients_in_train_and_test"] == 1
    assert found["duplicate_groups_across_splits"] == 1


def test_patient_rule_merge_normal2_reads_normal2_ids_as_the_im_patient() -> None:
    manifest = pd.DataFrame({
        "image_id": ["NORMAL2-IM-0095-0001", "IM-0100-0001", "IM-0095-0001", "IM-0100-0002",
                     "person1_virus_1"],
        "patient_id": ["NORMAL2-IM-0095", "IM-0100", "IM-0095", "IM-0100", "person1"],
        "split": ["train", "train", "test", "test", "test"],
        "label": ["NORMAL", "NORMAL", "NORMAL", "NORMAL", "PNEUMONIA"],
        "sha256": ["h1", "h2", "h3", "h4", "h5"],
    })
    assert validate.patients_in_train_and_test(manifest) == ["IM-0100"]
    assert validate.patients_in_train_and_test(manifest, "merge_normal2") == ["IM-0095",
                                                                              "IM-0100"]
    strict = validate.leaking_test_images(manifest).set_index("image_id")
    merged = validate.leaking_test_images(manifest, "merge_normal2").set_index("image_id")
    assert strict.loc["IM-0095-0001", "leakfree"] and not merged.loc["IM-0095-0001", "leakfree"]
    assert merged.loc["person1_virus_1", "leakfree"] and merged.loc["IM-0095-0001", "patient"] \
        == "IM-0095"
    with pytest.raises(ValueError, match="strict, merge_normal2"):
        validate.patient_key(manifest.patient_id, "loose")


def test_full_dataset_patient_rules_differ_by_exactly_94_normal_ids(shared_dataset: Path) -> None:
    """On the shared copy: 170 patients in both train and test as the names are written, 264
    when NORMAL2-IM-x is read as IM-x (a published audit's count): 94 more, all NORMAL."""
    from pneumonia.dataset import kermany

    images = kermany.scan(shared_dataset).images
    manifest = pd.DataFrame({"patient_id": [i.patient_id for i in images],
                             "split": [i.split for i in images],
                             "label": [i.label for i in images]})
    strict = validate.patients_in_train_and_test(manifest)
    merged = validate.patients_in_train_and_test(manifest, "merge_normal2")
    assert (len(strict), len(merged)) == (170, 264)
    as_merged = set(validate.patient_key(pd.Series(strict), "merge_normal2"))
    added = set(merged) - as_merged
    assert len(added) == 94
    keys = validate.patient_key(manifest.patient_id, "merge_normal2")
    assert set(manifest.label[keys.isin(added)]) == {"NORMAL"}


def test_missing_manifest_says_run_ingest(workdir: Path, mini_raw: Path) -> None:
    with pytest.raises(PipelineError, match="run the ingest stage"):
        validate.run(make_params(mini_raw))


def test_missing_column_fails_cleanly(workdir: Path, mini_raw: Path) -> None:
    ingest.run(make_params(mini_raw))
    MANIFEST.write_text("\n".join(",".join(line.split(",")[:-1]) for line in
                                  MANIFEST.read_text().splitlines()) + "\n")  # drop the last column
    with pytest.raises(PipelineError, match="required_columns_present"):
        validate.run(make_params(mini_raw))


def test_full_dataset(full_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(full_project)
    report = json.loads(VALIDATION_JSON.read_text())
    assert report["success"] and report["rows"] == 5856
    t1 = next(e for e in report["details"]["expectations"] if e["name"] == "table1_counts")
    assert t1["success"]
    # Known leakage of the official split on this copy (see the dataset README).
    assert report["duplicate_groups_within_split"] == 30
    assert report["duplicate_groups_across_splits"] == 0
    assert report["patients_in_train_and_test"] == 170
    import pandas as pd

    m = pd.read_csv(MANIFEST)
    assert len(m) == 5856
    counts = m.groupby(["split", "label"]).size().to_dict()
    assert counts == {("train", "NORMAL"): 1349, ("train", "PNEUMONIA"): 3883,
                      ("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390}


@pytest.mark.parametrize(("split_name", "label"), [("test", "NORMAL"), ("test", "PNEUMONIA"),
                                                   ("train", "NORMAL")])
def test_a_split_without_a_class_stops_validate_naming_both(
        workdir: Path, mini_raw: Path, split_name: str, label: str) -> None:
    # A test set without NORMAL scored accuracy 1.000 for a constant classifier and let it become
    # champion (issue 35): validate must stop it, naming the split and the missing class.
    ingest.run(make_params(mini_raw))
    manifest = pd.read_csv(MANIFEST, dtype=str, keep_default_na=False)
    manifest = manifest[~((manifest.split == split_name) & (manifest.label == label))]
    manifest.to_csv(MANIFEST, index=False, lineterminator="\n")
    with pytest.raises(PipelineError) as err:
        validate.run(make_params(mini_raw))
    message = str(err.value)
    assert f"{split_name}_has_every_label" in message
    assert f"the {split_name} split has no {label} image" in message
    saved = json.loads(VALIDATION_JSON.read_text())
    failed = [e["name"] for e in saved["details"]["expectations"] if not e["success"]]
    assert failed == [f"{split_name}_has_every_label"]


def test_three_class_test_set_without_a_cause_names_it(workdir: Path, mini_raw: Path) -> None:
    ingest.run(make_params(mini_raw))
    manifest = pd.read_csv(MANIFEST, dtype=str, keep_default_na=False)
    manifest = manifest[~((manifest.split == "test") & (manifest["class"] == "virus"))]
    manifest.to_csv(MANIFEST, index=False, lineterminator="\n")
    assert validate.run(make_params(mini_raw))["success"]  # binary: a cause is not a class
    with pytest.raises(PipelineError, match="the test split has no virus image"):
        validate.run(dataclasses.replace(make_params(mini_raw), task="three_class"))
