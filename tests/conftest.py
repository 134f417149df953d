"""Shared fixtures for the data stages: small real datasets built from the bundled sample, and the
full shared dataset at ../shared (skipped when absent — but a failure when CI=true: CI clones the
repository with shared/ beside the clone, so a missing dataset there is a broken CI set-up that
must not pass as green)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from pneumonia.params import Params, parse_params
from tests import prockit

# Every process the tests start carries this session's marker (tests/prockit.py).
SESSION_MARKER = prockit.mark_session()

REPO = Path(__file__).resolve().parents[1]  # tests/conftest.py -> the repository root
SAMPLE = REPO / "data/sample/chest_xray"
# ../shared next to the repository root (a clone's folder, or a worktree's).
SHARED = REPO.parent / "shared/datasets/chest_xray"

# A small Kaggle-layout dataset: (folder, count) taken in sorted order from the bundled sample.
# train/PNEUMONIA takes bacteria and virus names; val/ holds the 4 full-size grayscale originals.
MINI = {
    "train/NORMAL": 5,
    "train/PNEUMONIA": 5,
    "val/NORMAL": 2,
    "val/PNEUMONIA": 2,
    "test/NORMAL": 3,
    "test/PNEUMONIA": 3,
}


def sample_files(folder: str, n: int) -> list[Path]:
    """n real images of the bundled sample's `folder`; for PNEUMONIA both bacteria and virus."""
    files = sorted((SAMPLE / folder).iterdir())
    if folder.endswith("PNEUMONIA"):
        bacteria = [f for f in files if "bacteria" in f.name]
        virus = [f for f in files if "virus" in f.name]
        picked = (bacteria[: (n + 1) // 2] + virus[: n // 2]) if virus else bacteria[:n]
        return sorted(picked)
    return files[:n]


def make_kaggle(dest: Path, layout: dict[str, int] = MINI) -> Path:
    """Copy a small real dataset in Kaggle layout (train/val/test x NORMAL/PNEUMONIA) to `dest`."""
    for folder, n in layout.items():
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for f in sample_files(folder, n):
            shutil.copy2(f, dest / folder / f.name)
    return dest


def make_kaggle_archive_tree(dest: Path) -> Path:
    """A replica of the real Kaggle download: chest_xray/ with a nested full copy
    chest_xray/chest_xray/, __MACOSX/ with AppleDouble ._* files, and .DS_Store files."""
    root = make_kaggle(dest / "chest_xray")
    make_kaggle(root / "chest_xray")
    for mac in (dest / "__MACOSX" / "chest_xray", root / "__MACOSX"):
        for folder in MINI:
            (mac / folder).mkdir(parents=True, exist_ok=True)
            for f in sample_files(folder, 2):
                (mac / folder / f"._{f.name}").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"Bud1\x00")
    (root / "train" / "NORMAL" / f"._{sample_files('train/NORMAL', 1)[0].name}").write_bytes(b"x")
    return dest


def zip_tree(src: Path, zip_path: Path) -> Path:
    """Zip the contents of `src` (paths inside the zip relative to src)."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(src.rglob("*")):
            zf.write(f, f.relative_to(src).as_posix())
    return zip_path


def make_params(raw: Path | str, **sections: dict[str, Any]) -> Params:
    """Params for tests: small images, one worker, Table I check off (mini datasets)."""
    raw_params: dict[str, Any] = {
        "lr": 1e-3,
        "data": {"raw": str(raw), "image_size": 32},
        "ingest": {"workers": 1},
        "validate": {"table1_counts": False},
        "balance": {"workers": 1},
    }
    for key, values in sections.items():
        raw_params.setdefault(key, {}).update(values)
    return parse_params(raw_params)


def tree_hashes(*paths: Path) -> dict[str, str]:
    """sha256 of every file under `paths` (files or folders), keyed by posix path."""
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            out[f.as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def zeros_png(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A valid grayscale PNG of width x height black pixels (bit depth 1, 8 or 16), a few hundred
    kB at most on disk whatever it announces: rows are deflated as a stream, never held."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" * (1 + (width * bit_depth + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def peak_traced_mb(call: Callable[[], Any]) -> float:
    """Peak memory Python and NumPy allocated during `call()` (tracemalloc), in MB; a
    ValueError from it is expected (a refused input)."""
    tracemalloc.start()
    try:
        call()
    except ValueError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak / 1e6


def big_png(path: Path, side: int = 10_000) -> Path:
    """A valid 1-bit PNG of side x side pixels (100 M pixels by default: over Pillow's
    decompression-bomb warning limit of ~89 M), a few kB on disk."""
    path.write_bytes(zeros_png(side, side))
    return path


def require_shared(path: Path = SHARED) -> Path:
    """The full dataset's folder; skip the test when it is absent, or fail it when CI=true."""
    if path.is_dir():
        return path
    message = f"full dataset not found at {path} (CI has ../shared next to the clone)"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def gpu_visible() -> bool:
    """An NVIDIA GPU answers `nvidia-smi -L` (no TensorFlow import: the check runs for every
    session)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.gpu` tests are skipped where no GPU is visible."""
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if gpu_tests and not gpu_visible():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU (marker gpu)")
        for item in gpu_tests:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dataset() -> Path:
    """The full shared dataset (Kaggle layout), or skip (fail under CI=true)."""
    return require_shared()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory, made the current directory (stages work relative to it)."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return project


@pytest.fixture
def mini_raw(tmp_path: Path) -> Path:
    """A small real dataset in Kaggle folder layout."""
    return make_kaggle(tmp_path / "raw" / "chest_xray")


@pytest.fixture(scope="session")
def full_project(
    tmp_path_factory: pytest.TempPathFactory, shared_dataset: Path
) -> Iterator[Path]:
    """The full shared dataset ingested (32 px), validated, balanced and split, once per session.

    Tests that use it chdir into it themselves and must not modify it."""
    from pneumonia.dataset import balance, ingest, split, validate

    project = tmp_path_factory.mktemp("full")
    params = make_params(shared_dataset, ingest={"workers": 2}, balance={"workers": 2},
                         validate={"table1_counts": True})
    old = Path.cwd()
    os.chdir(project)
    try:
        ingest.run(params)
        validate.run(params)
        balance.run(params)
        split.run(params)
    finally:
        os.chdir(old)
    yield project


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session() -> Iterator[None]:
    """After the whole session (this fixture is set up first, so torn down last: after every
    server fixture), no process started by the tests may still run. Fails the run naming each
    one, then kills them (they are ours: descendants or carriers of this session's marker)."""
    yield
    leaked = prockit.wait_gone(prockit.session_processes(SESSION_MARKER), timeout=15)
    if not leaked:
        return
    report = "\n  ".join(prockit.describe(p) for p in leaked)
    for proc in leaked:
        with suppress(Exception):
            proc.kill()
    pytest.fail(f"{len(leaked)} process(es) started by the tests still ran after the test "
                f"session (now killed):\n  {report}", pytrace=False)
