"""The dataset's layout and naming: finding the root, ignoring archive junk, parsing names."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from pneumonia.dataset import kermany
from pneumonia.errors import PipelineError
from tests.conftest import (
    MINI,
    REPO,
    SAMPLE,
    SHARED,
    make_kaggle,
    make_kaggle_archive_tree,
    require_shared,
    zip_tree,
)


@pytest.mark.parametrize(
    ("stem", "label", "klass", "patient"),
    [
        ("person1_bacteria_1", "PNEUMONIA", "bacteria", "person1"),
        ("person1946_virus_4874", "PNEUMONIA", "virus", "person1946"),
        ("person447_virus_921_1", "PNEUMONIA", "virus", "person447"),  # the one 3-number name
        ("IM-0115-0001", "NORMAL", "normal", "IM-0115"),
        ("NORMAL2-IM-1427-0001", "NORMAL", "normal", "NORMAL2-IM-1427"),
        ("IM-0011-0001-0002", "NORMAL", "normal", "IM-0011"),  # conservative: first IM number
    ],
)
def test_parse_name_real_names(stem: str, label: str, klass: str, patient: str) -> None:
    assert kermany.parse_name(stem, label) == (klass, patient)


@pytest.mark.parametrize(
    ("stem", "label", "reason"),
    [
        ("IM-0115-0001", "PNEUMONIA", "neither bacteria nor virus"),
        ("person3_fungal_2", "PNEUMONIA", "neither bacteria nor virus"),
        ("scan_001", "NORMAL", "does not follow"),
        ("IM-0115", "NORMAL", "does not follow"),
    ],
)
def test_parse_name_rejects(stem: str, label: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        kermany.parse_name(stem, label)


def _summary(inv: kermany.Inventory) -> list[tuple[str, str, str, str, str, str]]:
    return sorted((i.source_file, i.split, i.label, i.image_id, i.klass, i.patient_id)
                  for i in inv.images)


def test_scan_kaggle_folder_merges_val(mini_raw: Path) -> None:
    inv = kermany.scan(mini_raw)
    assert inv.kind == "folder" and inv.root == "." and not inv.bad
    counts = Counter((i.split, i.label) for i in inv.images)
    assert counts == {("train", "NORMAL"): 7, ("train", "PNEUMONIA"): 7,
                      ("test", "NORMAL"): 3, ("test", "PNEUMONIA"): 3}
    assert inv.merged_val == {"NORMAL": 2, "PNEUMONIA": 2}
    val = [i for i in inv.images if i.source_file.startswith("val/")]
    assert len(val) == 4 and all(i.split == "train" for i in val)


def test_archive_replica_and_zips_give_the_same_images(tmp_path: Path) -> None:
    clean = kermany.scan(make_kaggle(tmp_path / "clean"))
    tree = make_kaggle_archive_tree(tmp_path / "archive")
    archived = kermany.scan(tree)
    zipped = kermany.scan(zip_tree(tree, tmp_path / "chest-xray-pneumonia.zip"))
    assert archived.root == zipped.root == "chest_xray"
    assert zipped.kind == "zip"
    assert _summary(archived) == _summary(clean) == _summary(zipped)
    n_images = sum(MINI.values())
    for inv in (archived, zipped):
        assert inv.ignored["nested copy of the dataset (chest_xray/chest_xray)"] == n_images
        assert inv.ignored["__MACOSX folders (macOS archive metadata)"] == 2 * 2 * len(MINI)
        assert inv.ignored["AppleDouble ._* files"] == 1
        assert inv.ignored["system files (.DS_Store, Thumbs.db)"] == 1


def test_mendeley_zip_without_val(tmp_path: Path) -> None:
    layout = {k: v for k, v in MINI.items() if not k.startswith("val/")}
    src = make_kaggle(tmp_path / "ChestXRay2017" / "chest_xray", layout)
    inv = kermany.scan(zip_tree(tmp_path / "ChestXRay2017", tmp_path / "ChestXRay2017.zip"))
    assert inv.root == "chest_xray" and inv.merged_val == {}
    assert len(inv.images) == sum(layout.values())
    assert src.is_dir()


def test_case_insensitive_class_and_split_folders(tmp_path: Path) -> None:
    raw = make_kaggle(tmp_path / "raw")
    (raw / "train" / "NORMAL").rename(raw / "train" / "normal")
    (raw / "test" / "PNEUMONIA").rename(raw / "test" / "Pneumonia")
    (raw / "val").rename(raw / "VAL")
    inv = kermany.scan(raw)
    assert not inv.bad
    assert Counter(i.label for i in inv.images) == {"NORMAL": 10, "PNEUMONIA": 10}
    assert any(i.source_file.startswith("train/normal/") and i.label == "NORMAL"
               for i in inv.images)


def test_no_test_split_is_an_error(tmp_path: Path) -> None:
    raw = make_kaggle(tmp_path / "raw")
    shutil.rmtree(raw / "test")
    with pytest.raises(PipelineError, match=r"holding train/ and\s+test/"):
        kermany.scan(raw)


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="data.raw"):
        kermany.scan(tmp_path / "nowhere")


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    raw = make_kaggle(tmp_path / "raw")
    for f in (raw / "test" / "NORMAL").iterdir():
        f.unlink()
    with pytest.raises(PipelineError, match="test/NORMAL"):
        kermany.scan(raw)


def test_unknown_class_and_loose_files_are_bad_entries(tmp_path: Path) -> None:
    raw = make_kaggle(tmp_path / "raw")
    real = sample_image()
    (raw / "train" / "COVID").mkdir()
    shutil.copy(real, raw / "train" / "COVID" / "person9001_virus_1.jpeg")
    shutil.copy(real, raw / "test" / "IM-9002-0001.jpeg")
    shutil.copy(real, raw / "test" / "PNEUMONIA" / "IM-9003-0001.jpeg")
    inv = kermany.scan(raw)
    reasons = {b.source_file: b.reason for b in inv.bad}
    assert "unknown class folder 'COVID'" in reasons["train/COVID/person9001_virus_1.jpeg"]
    assert "outside the NORMAL/ and PNEUMONIA/" in reasons["test/IM-9002-0001.jpeg"]
    assert "neither bacteria nor virus" in reasons["test/PNEUMONIA/IM-9003-0001.jpeg"]
    assert len(inv.images) == sum(MINI.values())


def test_duplicate_image_ids_are_an_error(tmp_path: Path) -> None:
    raw = make_kaggle(tmp_path / "raw")
    name = next((raw / "train" / "NORMAL").iterdir()).name
    shutil.copy(raw / "train" / "NORMAL" / name, raw / "test" / "NORMAL" / name)
    with pytest.raises(PipelineError, match=name.split(".")[0]):
        kermany.scan(raw)


def sample_image() -> Path:
    return min((SAMPLE / "train" / "NORMAL").iterdir())


def test_scan_full_shared_dataset(shared_dataset: Path) -> None:
    inv = kermany.scan(shared_dataset)
    assert not inv.bad
    counts = Counter((i.split, i.label) for i in inv.images)
    assert counts == {("train", "NORMAL"): 1349, ("train", "PNEUMONIA"): 3883,
                      ("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390}
    assert Counter(i.klass for i in inv.images if i.split == "test") == {
        "normal": 234, "bacteria": 242, "virus": 148}
    assert inv.ignored == {"files outside train/, val/ and test/": 1}  # README.md


def test_full_dataset_is_looked_for_beside_the_clone_and_required_under_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI clones the repository to <dir>/<clone> with the dataset at <dir>/shared: the path is
    relative to the repository root whatever the test file's depth, and with CI=true a missing
    dataset fails the full-dataset tests instead of skipping them."""
    assert REPO == Path(__file__).resolve().parents[2] and (REPO / "dvc.yaml").is_file()
    assert SHARED == REPO.parent / "shared" / "datasets" / "chest_xray"
    missing = tmp_path / "shared" / "datasets" / "chest_xray"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_shared(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_shared(missing)
    missing.mkdir(parents=True)
    assert require_shared(missing) == missing
