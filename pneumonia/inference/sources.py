"""What the model reads: command-line paths expanded into images, and image bytes -> model input.

`expand(paths)` turns files, folders (recursively) and .zip archives (read member by member, never
unpacked) into `Item`s, each knowing how to read its bytes. `to_input(data, size)` decodes bytes
with the ingest stage's own code (`pneumonia.dataset.images.decode_one`: full decode, 8-bit
gray, LANCZOS squash; DICOM through `pneumonia.dataset.dicom`) into the S x S x 1 float32 array
the model takes: a new image is prepared exactly as the training images were.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from pneumonia.dataset.images import DEFAULT_MAX_MEGAPIXELS, LIMIT_KEY, decode_one
from pneumonia.errors import PipelineError
from pneumonia.params import load_params

# Looked for inside folders and archives (case-insensitive). A file named on the command line is
# read whatever its name: a wrong extension is reported by the decoder, not silently skipped.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
# Larger files are refused before they are read: a .zip member of a few MB can inflate to GBs.
# The largest genuine input, an uncompressed 16-bit DICOM at the 50 MP pixel cap, is 100 MB.
MAX_FILE_BYTES = 512 * 2**20
_JUNK_NAMES = (".DS_Store", "Thumbs.db")


@dataclass(frozen=True)
class Item:
    """One image to predict: `name` is what the output shows (a path, or archive.zip:member)."""

    name: str
    read: Callable[[], bytes]


def _is_junk(parts: Iterable[str]) -> bool:
    parts = list(parts)
    return (any(p == "__MACOSX" for p in parts) or parts[-1].startswith("._")
            or parts[-1] in _JUNK_NAMES)


def _wanted(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _too_big(size: int) -> ValueError:
    return ValueError(f"file too large: {size / 2**20:.0f} MiB, over the limit of "
                      f"{MAX_FILE_BYTES / 2**20:.0f} MiB for one image; refused before reading")


def _read_member(archive: Path, member: str) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with zipfile.ZipFile(archive) as zf:
                # zipfile stops at the size the member declares: checking it bounds the read.
                size = zf.getinfo(member).file_size
                if size > MAX_FILE_BYTES:
                    raise _too_big(size)
                return zf.read(member)
        except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
            raise ValueError(f"cannot read this archive member ({exc})") from None

    return read


def _read_file(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise _too_big(size)
            return path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the file ({exc.strerror or exc})") from None

    return read


def _zip_items(path: Path) -> list[Item]:
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i.filename for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise PipelineError(f"{path}: not a readable .zip archive ({exc})") from None
    names = sorted(m for m in members
                   if _wanted(m) and not _is_junk(PurePosixPath(m).parts))
    if not names:
        raise PipelineError(f"{path}: the archive holds no images "
                            f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
    return [Item(f"{path}:{m}", _read_member(path, m)) for m in names]


def _folder_items(path: Path) -> list[Item]:
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and _wanted(p.name)
                   and not _is_junk(p.relative_to(path).parts))
    if not files:
        raise PipelineError(f"{path}: no images in this folder or below "
                            f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
    return [Item(str(p), _read_file(p)) for p in files]


def expand(paths: Iterable[str | Path]) -> list[Item]:
    """Every image under `paths`, in the order given (folders and archives sorted by name).

    A path that does not exist, an empty folder or an archive without images is a usage error
    (PipelineError); an unreadable or undecodable image only fails that item, later.
    """
    items: list[Item] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            items.extend(_folder_items(path))
        elif path.is_file() and path.suffix.lower() == ".zip":
            items.extend(_zip_items(path))
        elif path.is_file():
            items.append(Item(str(path), _read_file(path)))
        else:
            raise PipelineError(f"{path}: no such file or folder")
    if not items:
        raise PipelineError("no images given")
    return items


def params_max_megapixels() -> tuple[float, str]:
    """The pixel cap for `predict` / `explain`: params.yaml `data.max_megapixels` when there is a
    readable params.yaml here, else the default; and where it came from."""
    try:
        return load_params().data.max_megapixels, f"params.yaml {LIMIT_KEY}"
    except (PipelineError, OSError):
        return DEFAULT_MAX_MEGAPIXELS, "default"


def to_input(data: bytes, size: int, max_megapixels: float | None = None) -> np.ndarray:
    """Image bytes -> the model's input: (size, size, 1) float32 pixels 0..255, decoded and
    resized by the ingest stage's code. An image over `max_megapixels` (default: the params
    default, 50) is refused from its header. Raises ValueError with the reason for a bad image."""
    gray, _, _, _ = decode_one(data, size, max_megapixels or DEFAULT_MAX_MEGAPIXELS)
    return np.asarray(gray, dtype=np.float32)[..., None]
