"""Command-line paths -> images (pneumonia.inference.sources): folders, zips, usage errors."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from pneumonia.errors import PipelineError
from pneumonia.inference.sources import expand, to_input
from tests.conftest import SAMPLE


def _sample(n: int) -> list[Path]:
    return sorted((SAMPLE / "test" / "NORMAL").iterdir())[:n]


def test_folders_are_searched_recursively_and_junk_is_skipped(tmp_path: Path) -> None:
    a, b = _sample(2)
    (tmp_path / "x" / "deep").mkdir(parents=True)
    shutil.copy(a, tmp_path / "x" / "one.jpeg")
    shutil.copy(b, tmp_path / "x" / "deep" / "two.PNG")  # case-insensitive extension
    (tmp_path / "x" / "notes.txt").write_text("not an image")
    (tmp_path / "x" / "._one.jpeg").write_bytes(b"AppleDouble")
    (tmp_path / "x" / "__MACOSX").mkdir()
    (tmp_path / "x" / "__MACOSX" / "three.jpeg").write_bytes(b"junk")
    items = expand([tmp_path / "x"])
    assert [Path(i.name).name for i in items] == ["two.PNG", "one.jpeg"]  # sorted by path
    assert items[1].read() == a.read_bytes()


def test_zip_members_are_read_without_unpacking(tmp_path: Path) -> None:
    a, b = _sample(2)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(a, "batch/a.jpeg")
        zf.write(b, "b.jpeg")
        zf.writestr("__MACOSX/batch/._a.jpeg", b"junk")
        zf.writestr("readme.txt", "x")
    items = expand([archive])
    assert [i.name for i in items] == [f"{archive}:b.jpeg", f"{archive}:batch/a.jpeg"]
    assert items[1].read() == a.read_bytes()
    assert not list(tmp_path.glob("batch"))


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir() or p, "no images in this folder"),
    (lambda p: p, "no such file or folder"),
    (lambda p: (p.with_suffix(".zip").write_bytes(b"PK not a zip") and p.with_suffix(".zip")),
     "not a readable .zip"),
])
def test_usage_errors_are_one_clear_message(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        expand([make(tmp_path / "in")])


def test_empty_folder_with_only_other_files_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PipelineError, match=r"no images .*looked for .png"):
        expand([tmp_path])


def test_a_file_named_on_the_command_line_is_decoded_whatever_its_name(tmp_path: Path) -> None:
    text = tmp_path / "fake.png"
    text.write_text("this is text, not a PNG")
    (item,) = expand([text])
    with pytest.raises(ValueError, match="not an image"):
        to_input(item.read(), 32)


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    data = _sample(1)[0].read_bytes()
    with pytest.raises(ValueError, match="truncated"):
        to_input(data[: len(data) // 2], 32)


def test_model_input_is_ingest_decoding() -> None:
    """Same pixels as ingest's decode_one: gray 8-bit squashed, as float32 S x S x 1."""
    import numpy as np

    from pneumonia.dataset.images import decode_one

    data = _sample(1)[0].read_bytes()
    x = to_input(data, 48)
    assert x.shape == (48, 48, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], np.asarray(decode_one(data, 48)[0], np.float32))


def test_files_and_zip_members_over_the_size_limit_are_refused_before_reading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zip member of a few kB can inflate to GBs: its declared size is checked first (zipfile
    never reads past it). The limit is lowered here so that the files stay small."""
    from pneumonia.inference import sources

    monkeypatch.setattr(sources, "MAX_FILE_BYTES", 2**20)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.png", bytes(3 * 2**20))
        zf.write(_sample(1)[0], "ok.jpeg")
    assert archive.stat().st_size < 2**16
    big, ok = expand([archive])
    with pytest.raises(ValueError, match=r"file too large: 3 MiB, over the limit of 1 MiB"):
        big.read()
    assert ok.read() == _sample(1)[0].read_bytes()
    plain = tmp_path / "big.dcm"
    plain.write_bytes(bytes(3 * 2**20))
    with pytest.raises(ValueError, match="file too large"):
        expand([plain])[0].read()
