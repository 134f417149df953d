"""Reading a site's labelled set: layouts, patients, and every kind of bad input refused."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from pneumonia.errors import PipelineError
from pneumonia.site import calibrate, names
from pneumonia.site import labelled as reader
from tests.site.conftest import write_pngs


def test_folder_and_zip_give_the_same_set_and_hash(labelled: Path, tmp_path: Path) -> None:
    data = labelled_read(labelled)
    assert data.counts() == {"NORMAL": 12, "PNEUMONIA": 12}
    assert data.arrays.shape == (24, 32, 32, 1)
    assert data.patients_from == "none" and len(set(data.groups)) == 24
    archive = tmp_path / "site.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(labelled.rglob("*.png")):
            zf.write(f, f"export/{f.relative_to(labelled)}")
    zipped = labelled_read(archive)
    assert zipped.digest() == data.digest()
    # another label for one image: another hash
    (labelled / "PNEUMONIA" / "n000.png").write_bytes((labelled / "NORMAL" / "n000.png")
                                                      .read_bytes())
    (labelled / "NORMAL" / "n000.png").unlink()
    assert labelled_read(labelled).digest() != data.digest()


def labelled_read(path: Path) -> reader.LabelledSet:
    return reader.read(path, 32)


def test_kermany_names_keep_patients_together(tmp_path: Path) -> None:
    root = tmp_path / "k"
    for i, p in enumerate(write_pngs(root / "PNEUMONIA", 4, 160, 3)):
        p.rename(p.with_name(f"person{i // 2}_bacteria_{i}.png"))
    for i, p in enumerate(write_pngs(root / "NORMAL", 2, 90, 4)):
        p.rename(p.with_name(f"IM-00{i}-0001.png"))
    data = reader.read(root, 32)
    assert data.patients_from == "file names"
    assert sorted(set(data.groups)) == ["IM-000", "IM-001", "person0", "person1"]


def test_unreadable_files_are_all_listed(labelled: Path) -> None:
    (labelled / "NORMAL" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (labelled / "PNEUMONIA" / "empty.jpeg").write_bytes(b"")
    with pytest.raises(PipelineError) as err:
        reader.read(labelled, 32)
    text = str(err.value)
    assert "2 file(s)" in text and "NORMAL/broken.png" in text and "PNEUMONIA/empty.jpeg" in text
    assert "nothing was calibrated or registered" in text


def test_one_class_is_refused(tmp_path: Path) -> None:
    write_pngs(tmp_path / "only" / "PNEUMONIA", 30, 160, 5)
    with pytest.raises(PipelineError, match=r"no NORMAL image in the labelled set.*both classes"):
        reader.read(tmp_path / "only", 32)


def test_training_images_are_refused_by_content_hash(labelled: Path, tmp_path: Path) -> None:
    data = reader.read(labelled, 32)
    seen = labelled / "PNEUMONIA" / "p003.png"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image_id,split,sha256\n"
                        f"x,train,{hashlib.sha256(seen.read_bytes()).hexdigest()}\n"
                        f"y,test,{data.images[0].sha256}\n", encoding="utf-8")  # test: allowed
    assert reader.training_overlap(data, manifest) == ["PNEUMONIA/p003.png"]


def test_too_few_images_for_alpha_says_how_many() -> None:
    with pytest.raises(PipelineError, match="at least 19 .*have 18"):
        calibrate.check_size({"NORMAL": 9, "PNEUMONIA": 9}, 0.05, "lac", None)
    calibrate.check_size({"NORMAL": 9, "PNEUMONIA": 10}, 0.05, "lac", None)  # 19: enough
    with pytest.raises(PipelineError, match=r"each class needs at least 45 .*NORMAL"):
        calibrate.check_size({"NORMAL": 44, "PNEUMONIA": 300}, 0.05, "mondrian", 0.1)


@pytest.mark.parametrize("bad", ["", "St Marys", "-x", "a" * 41, "site_1", "ü"])
def test_invalid_site_names(bad: str) -> None:
    with pytest.raises(PipelineError, match="not a valid site name"):
        names.check(bad)
    assert names.alias("st-marys") == "site-st-marys"
