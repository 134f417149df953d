"""Ingest on small real datasets: layouts, image variants, bad files, determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumonia.dataset import ingest
from pneumonia.errors import PipelineError
from pneumonia.paths import IMAGES_DIR, INGEST_REPORT, MANIFEST
from tests.conftest import (
    MINI,
    SAMPLE,
    big_png,
    make_kaggle,
    make_kaggle_archive_tree,
    make_params,
    tree_hashes,
    zip_tree,
)


def real_gray(size: int | None = None) -> Image.Image:
    """A real X-ray (full-size grayscale original from val/), optionally squashed to size."""
    with Image.open(min((SAMPLE / "val" / "NORMAL").iterdir())) as img:
        img = img.convert("L")
    return img.resize((size, size), Image.Resampling.LANCZOS) if size else img


def run_ingest(project: Path, raw: Path, monkeypatch: pytest.MonkeyPatch, **sections) -> dict:
    project.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(project)
    return ingest.run(make_params(raw, **sections))


def test_kaggle_folder(workdir: Path, mini_raw: Path) -> None:
    report = ingest.run(make_params(mini_raw))
    m = pd.read_csv(MANIFEST, keep_default_na=False)
    assert list(m.columns) == ingest.MANIFEST_COLUMNS
    assert len(m) == sum(MINI.values())
    assert m[["split", "label", "image_id"]].apply(tuple, axis=1).is_monotonic_increasing
    assert report["counts"] == {"train": {"NORMAL": 7, "PNEUMONIA": 7},
                                "test": {"NORMAL": 3, "PNEUMONIA": 3}}
    val = m[m.source_file.str.startswith("val/")]
    assert len(val) == 4 and set(val.split) == {"train"} and set(val["mode"]) == {"L"}
    assert (val.width > 900).all()  # originals' size is recorded, not the ingested size
    for row in m.itertuples():
        assert row.path == f"data/images/{row.split}/{row.label}/{row.image_id}.png"
        with Image.open(row.path) as img:
            assert img.mode == "L" and img.size == (32, 32)
    assert sorted(p.as_posix() for p in IMAGES_DIR.rglob("*.png")) == sorted(m.path)
    saved = json.loads(INGEST_REPORT.read_text())
    assert saved["status"] == "ok" and saved["source_kind"] == "folder"
    assert saved["merged_from_val"] == {"NORMAL": 2, "PNEUMONIA": 2}


def test_archive_replica_folder_and_zip_match_clean_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = make_kaggle(tmp_path / "clean")
    tree = make_kaggle_archive_tree(tmp_path / "archive")
    zipped = zip_tree(tree, tmp_path / "chest-xray-pneumonia.zip")
    outputs = []
    for name, raw, n_workers in (("a", clean, 1), ("b", tree, 1), ("c", zipped, 2)):
        report = run_ingest(tmp_path / name, raw, monkeypatch, ingest={"workers": n_workers})
        outputs.append(tree_hashes(IMAGES_DIR, MANIFEST))  # relative paths: comparable
        if name == "c":
            assert report["source_kind"] == "zip" and report["dataset_root"] == "chest_xray"
            assert report["ignored"]["nested copy of the dataset (chest_xray/chest_xray)"] == 20
    assert outputs[0] == outputs[1] == outputs[2]


def test_mendeley_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = {k: v for k, v in MINI.items() if not k.startswith("val/")}
    make_kaggle(tmp_path / "src" / "chest_xray", layout)
    raw = zip_tree(tmp_path / "src", tmp_path / "ChestXRay2017.zip")
    report = run_ingest(tmp_path / "p", raw, monkeypatch)
    assert report["images"] == sum(layout.values())
    assert report["merged_from_val"] == {"NORMAL": 0, "PNEUMONIA": 0}


def test_rerun_is_byte_identical_and_removes_stale_files(workdir: Path, mini_raw: Path) -> None:
    ingest.run(make_params(mini_raw))
    first = tree_hashes(IMAGES_DIR, MANIFEST, INGEST_REPORT)
    stale = IMAGES_DIR / "train" / "NORMAL" / "stale.png"
    stale.write_bytes(b"old")
    ingest.run(make_params(mini_raw, ingest={"workers": 2}))
    assert not stale.exists()
    assert tree_hashes(IMAGES_DIR, MANIFEST, INGEST_REPORT) == first


def test_image_variants_are_ingested_as_gray(workdir: Path, mini_raw: Path) -> None:
    folder = mini_raw / "train" / "NORMAL"
    gray = real_gray(32)
    arr8 = np.asarray(gray)
    # 16-bit grayscale: 8-bit values * 257 must come back exactly (scaled by depth, not clipped).
    Image.fromarray(arr8.astype(np.uint16) * 257).save(folder / "IM-9001-0001.png")
    # RGBA with a varying alpha: alpha is dropped, the gray content kept.
    rgba = gray.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((32, 32)))
    rgba.save(folder / "IM-9002-0001.png")
    gray.convert("LA").save(folder / "IM-9003-0001.png")
    real_gray(300).convert("CMYK").save(folder / "IM-9004-0001.jpeg", quality=95)
    gray.convert("P").save(folder / "IM-9005-0001.png")
    real_gray(300).convert("1").save(folder / "IM-9006-0001.png")

    ingest.run(make_params(mini_raw))
    m = pd.read_csv(MANIFEST, keep_default_na=False).set_index("image_id")
    modes = m["mode"].to_dict()
    assert modes["IM-9001-0001"] in ("I;16", "I")
    assert [modes[f"IM-900{i}-0001"] for i in range(2, 7)] == ["RGBA", "LA", "CMYK", "P", "1"]

    def out(image_id: str) -> np.ndarray:
        with Image.open(m.loc[image_id, "path"]) as img:
            assert img.mode == "L" and img.size == (32, 32)
            return np.asarray(img)

    np.testing.assert_array_equal(out("IM-9001-0001"), arr8)
    np.testing.assert_array_equal(out("IM-9002-0001"), arr8)
    np.testing.assert_array_equal(out("IM-9003-0001"), arr8)
    assert abs(out("IM-9004-0001").astype(float).mean() - arr8.mean()) < 5  # not inverted
    np.testing.assert_array_equal(out("IM-9005-0001"), arr8)
    assert out("IM-9006-0001").std() > 0


def test_manifest_is_written_as_pandas_would(tmp_path: Path) -> None:
    """write_manifest skips importing pandas; its bytes must equal pandas' to_csv, quoting of
    awkward file names included, so validate/split read back exactly what ingest meant."""
    row = dict.fromkeys(ingest.MANIFEST_COLUMNS, "x")
    rows = [
        {**row, "image_id": "IM-0001-0001", "width": 224, "height": 1, "patient_id": ""},
        {**row, "image_id": "IM-0002-0001", "source_file": 'train/NORMAL/a,"b".jpeg',
         "width": 2916, "height": 2583, "mode": "I;16"},
    ]
    ingest.write_manifest(rows, tmp_path / "m.csv")
    expected = pd.DataFrame(rows, columns=ingest.MANIFEST_COLUMNS).to_csv(
        index=False, lineterminator="\n")
    assert (tmp_path / "m.csv").read_text(encoding="utf-8") == expected
    back = pd.read_csv(tmp_path / "m.csv", keep_default_na=False)
    assert back.loc[1, "source_file"] == 'train/NORMAL/a,"b".jpeg'


def _add_bad_files(raw: Path) -> dict[str, str]:
    """Bad files built from a real JPEG; returns source_file -> expected reason text."""
    real = min((raw / "train" / "NORMAL").iterdir()).read_bytes()
    (raw / "train" / "NORMAL" / "IM-9101-0001.jpeg").write_bytes(real[: len(real) // 2])
    (raw / "train" / "NORMAL" / "IM-9102-0001.jpeg").write_bytes(b"")
    (raw / "test" / "NORMAL" / "IM-9103-0001.jpeg").write_text("<html>404 Not Found</html>\n")
    big_png(raw / "test" / "PNEUMONIA" / "person9104_virus_1.png")
    (raw / "train" / "COVID").mkdir()
    (raw / "train" / "COVID" / "person9105_virus_1.jpeg").write_bytes(real)
    return {
        "train/NORMAL/IM-9101-0001.jpeg": "truncated",
        "train/NORMAL/IM-9102-0001.jpeg": "empty file",
        "test/NORMAL/IM-9103-0001.jpeg": "not an image",
        "test/PNEUMONIA/person9104_virus_1.png": "decompression-bomb",
        "train/COVID/person9105_virus_1.jpeg": "unknown class folder",
    }


@pytest.mark.parametrize("n_workers", [1, 2])
def test_bad_files_fail_listing_every_one(workdir: Path, mini_raw: Path, n_workers: int) -> None:
    expected = _add_bad_files(mini_raw)
    with pytest.raises(PipelineError) as err:
        ingest.run(make_params(mini_raw, ingest={"workers": n_workers}))
    message = str(err.value)
    assert f"{len(expected)} bad file(s)" in message and "on_bad_file: skip" in message
    for line in message.splitlines():
        for source_file, reason in expected.items():
            if source_file in line:
                assert reason in line, line
    assert all(f in message for f in expected)
    report = json.loads(INGEST_REPORT.read_text())
    assert report["status"] == "failed"
    assert {b["source_file"] for b in report["bad_files"]} == set(expected)
    assert not IMAGES_DIR.exists() and not MANIFEST.exists()  # nothing half-done left behind


def test_bad_files_skipped_and_reported(
    workdir: Path, mini_raw: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = _add_bad_files(mini_raw)
    report = ingest.run(make_params(mini_raw, ingest={"on_bad_file": "skip"}))
    assert "skipped 5 bad file(s)" in caplog.text
    reasons = {b["source_file"]: b["reason"] for b in report["bad_files"]}
    assert set(reasons) == set(expected)
    assert all(expected[f] in reasons[f] for f in expected)
    m = pd.read_csv(MANIFEST, keep_default_na=False)
    assert len(m) == sum(MINI.values())
    assert not any(i.startswith(("IM-91", "person91")) for i in m.image_id)
    assert len(list(IMAGES_DIR.rglob("*.png"))) == len(m)


def test_tiny_image_is_ingested_with_its_size(workdir: Path, mini_raw: Path) -> None:
    real_gray(10).save(mini_raw / "train" / "NORMAL" / "IM-9201-0001.jpeg")
    ingest.run(make_params(mini_raw))
    row = pd.read_csv(MANIFEST).set_index("image_id").loc["IM-9201-0001"]
    assert (row.width, row.height) == (10, 10)


def test_a_source_without_test_split_fails_clearly(workdir: Path, mini_raw: Path) -> None:
    shutil.rmtree(mini_raw / "test")
    with pytest.raises(PipelineError, match="test/"):
        ingest.run(make_params(mini_raw))


def _corrupt_zip_member(zip_path: Path, member: str) -> None:
    """Flip one byte inside a stored member's data: its CRC check then fails on read."""
    import zipfile

    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(member)
    data = bytearray(zip_path.read_bytes())
    # Local header: 30 bytes + name + extra field, then the (stored) data.
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0xFF
    zip_path.write_bytes(bytes(data))


@pytest.mark.parametrize("n_workers", [1, 2])
def test_unreadable_files_are_bad_files_not_tracebacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_workers: int
) -> None:
    """A zip member failing its CRC check, and a file that cannot be opened (a dangling link),
    are reported like any bad file: listed, PipelineError, or skipped with on_bad_file: skip."""
    src = make_kaggle(tmp_path / "src" / "chest_xray")
    member = min(p.name for p in (src / "train" / "NORMAL").iterdir())
    zipped = zip_tree(tmp_path / "src", tmp_path / "archive.zip")
    _corrupt_zip_member(zipped, f"chest_xray/train/NORMAL/{member}")
    with pytest.raises(PipelineError) as err:
        run_ingest(tmp_path / "z", zipped, monkeypatch, ingest={"workers": n_workers})
    assert f"train/NORMAL/{member}: cannot read the file: BadZipFile" in str(err.value)
    assert "CRC" in str(err.value)
    report = run_ingest(tmp_path / "z2", zipped, monkeypatch,
                        ingest={"workers": n_workers, "on_bad_file": "skip"})
    assert [b["source_file"] for b in report["bad_files"]] == [f"train/NORMAL/{member}"]
    assert report["images"] == sum(MINI.values()) - 1

    (src / "test" / "NORMAL" / "IM-9401-0001.jpeg").symlink_to(tmp_path / "gone.jpeg")
    with pytest.raises(PipelineError) as err:
        run_ingest(tmp_path / "f", src, monkeypatch, ingest={"workers": n_workers})
    assert "test/NORMAL/IM-9401-0001.jpeg: cannot read the file: FileNotFoundError" in str(
        err.value)
