"""The Kermany 2018 chest X-ray dataset: where it lies, how it is laid out, what its names mean.

Accepted sources (``data.raw``): a folder or a ``.zip`` holding, at any depth, a dataset root — the
shallowest folder with a ``train`` and a ``test`` subfolder (names matched case-insensitively):

- the Kaggle "chest-xray-pneumonia" layout ``{train,val,test}/{NORMAL,PNEUMONIA}/``; ``val/`` is
  merged into ``train`` (Kaggle's val is 16 images cut out of the official training set, so
  train + val = the Mendeley/paper training set of 5232 images);
- the Mendeley ``ChestXRay2017.zip`` layout ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}/``.

Ignored, and counted in the ingest report: ``__MACOSX/`` folders, AppleDouble ``._*`` files,
``.DS_Store``/``Thumbs.db``, the nested second copy the Kaggle archive carries
(``chest_xray/chest_xray/...``, i.e. any other dataset root inside the chosen one) and files
outside ``train``/``val``/``test``. Class folders ``NORMAL``/``PNEUMONIA`` are matched
case-insensitively (``normal/``, ``Pneumonia/`` are accepted).

A "bad entry" is a file the pipeline cannot place: an unknown class folder (``COVID/``), a file
directly in ``train/`` or ``test/``, an unsupported extension, a name that does not parse, or a
PNEUMONIA file whose name says neither bacteria nor virus. Ingest fails on them or skips them
(``ingest.on_bad_file``).
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from pneumonia.errors import PipelineError
from pneumonia.paths import LABELS

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
SPLIT_FOLDERS = {"train": "train", "val": "train", "test": "test"}  # folder -> official split
JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}

# `person1_bacteria_1`, `person447_virus_921_1` (one real name has a second number).
_PNEUMONIA_NAME = re.compile(r"^(person\d+)_(bacteria|virus)(?:_\d+)+$", re.IGNORECASE)
_PERSON_NAME = re.compile(r"^(person\d+)_", re.IGNORECASE)
# `IM-0001-0001`, `NORMAL2-IM-0012-0001`, `IM-0011-0001-0002`: the patient is the IM number. For the
# 143 three-number names we keep only the first number (IM-0011), the conservative grouping: two
# images that might be the same child are never put on both sides of a split.
_NORMAL_NAME = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)(?:-\d+)+$", re.IGNORECASE)

SourceKind = Literal["folder", "zip"]


@dataclass(frozen=True)
class SourceImage:
    """One image file of the dataset, placed and named."""

    source_file: str  # posix path relative to the dataset root, e.g. val/NORMAL/x.jpeg
    member: str  # posix path inside the source folder or zip (what to open)
    split: str  # train | test (val merged into train)
    label: str  # NORMAL | PNEUMONIA
    image_id: str  # file stem
    klass: str  # normal | bacteria | virus
    patient_id: str


@dataclass(frozen=True)
class BadEntry:
    source_file: str
    reason: str


@dataclass
class Inventory:
    """What a scan of the source found."""

    kind: SourceKind
    root: str  # the dataset root inside the source, posix ("." = the source itself)
    images: list[SourceImage]
    bad: list[BadEntry]
    ignored: dict[str, int] = field(default_factory=dict)  # reason -> count
    merged_val: dict[str, int] = field(default_factory=dict)  # label -> images from val/


def parse_name(stem: str, label: str) -> tuple[str, str]:
    """Return (class, patient_id) for an image file stem in class folder `label`.

    Raises ValueError with the reason when the name does not follow the dataset's convention.
    """
    m = _PNEUMONIA_NAME.match(stem)
    if m:
        return m.group(2).lower(), m.group(1)
    m = _NORMAL_NAME.match(stem)
    if m:
        if label == "PNEUMONIA":
            raise ValueError(
                "PNEUMONIA image whose name says neither bacteria nor virus "
                "(expected personN_bacteria_M or personN_virus_M)"
            )
        return "normal", m.group(1)
    if label == "PNEUMONIA" and _PERSON_NAME.match(stem):
        raise ValueError(
            "PNEUMONIA image whose name says neither bacteria nor virus "
            "(expected personN_bacteria_M or personN_virus_M)"
        )
    raise ValueError(
        "file name does not follow the dataset's naming (personN_bacteria_M, personN_virus_M, "
        "IM-XXXX-YYYY or NORMAL2-IM-XXXX-YYYY)"
    )


def list_files(raw: Path) -> tuple[SourceKind, list[str]]:
    """All file paths of the source, posix and relative to it, sorted."""
    kind, files, _ = list_entries(raw)
    return kind, files


def _odd_kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a file nor a folder"


def list_entries(raw: Path) -> tuple[SourceKind, list[str], list[BadEntry]]:
    """(kind, every regular file path of the source — posix, relative to it, sorted — and the
    entries that are not read, each named with why).

    Not read, and so bad entries (issue 35: never a silent drop, never a hang): a symbolic link
    to a folder (not followed: it can lead out of data.raw or loop back into it; its path ends
    in `/`), and a FIFO, socket or device file (reading a FIFO blocks until someone writes to
    it). A symbolic link to a regular file is read like the file; a dangling one is listed and
    fails when read ("cannot read the file")."""
    if raw.is_dir():
        files: list[str] = []
        odd: list[BadEntry] = []
        for dirpath, dirnames, filenames in os.walk(raw):
            rel = Path(dirpath).relative_to(raw)
            for d in list(dirnames):
                if (Path(dirpath) / d).is_symlink():
                    dirnames.remove(d)  # os.walk does not descend into it either: say so
                    target = os.readlink(Path(dirpath) / d)
                    odd.append(BadEntry(
                        f"{(rel / d).as_posix()}/",
                        f"a symbolic link to a folder ({target}), not followed: copy the folder "
                        "into data.raw, or point data.raw at it"))
            dirnames.sort()
            for f in filenames:
                try:
                    mode = os.stat(Path(dirpath) / f).st_mode  # follows a link to a file
                except OSError:
                    mode = stat.S_IFREG  # dangling link: fails when read, named there
                if stat.S_ISREG(mode):
                    files.append((rel / f).as_posix())
                else:
                    odd.append(BadEntry((rel / f).as_posix(),
                                        f"not a regular file ({_odd_kind(mode)}): remove it"))
        return "folder", sorted(files), sorted(odd, key=lambda b: b.source_file)
    if raw.is_file() and raw.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(raw) as zf:
                return ("zip", sorted(i.filename for i in zf.infolist() if not i.is_dir()),
                        [])
        except zipfile.BadZipFile as exc:
            raise PipelineError(
                f"data.raw: {raw} is not a readable zip archive ({exc}). Download it again."
            ) from None
    raise PipelineError(
        f"data.raw: {raw} does not exist or is neither a folder nor a .zip. Put the Kaggle "
        "'chest-xray-pneumonia' folder/zip or the Mendeley ChestXRay2017.zip there, or point "
        "data.raw in params.yaml at it."
    )


def junk_reason(path: str) -> str | None:
    parts = PurePosixPath(path).parts
    if any(p == "__MACOSX" for p in parts):
        return "__MACOSX folders (macOS archive metadata)"
    name = parts[-1]
    if name.startswith("._"):
        return "AppleDouble ._* files"
    if name.lower() in JUNK_NAMES:
        return "system files (.DS_Store, Thumbs.db)"
    return None


def _find_roots(files: list[str]) -> list[str]:
    """Folders with both a `train` and a `test` subfolder (case-insensitive), shallowest first."""
    children: dict[str, set[str]] = {}
    for f in files:
        parts = PurePosixPath(f).parts[:-1]
        for depth in range(len(parts)):
            parent = "/".join(parts[:depth]) or "."
            children.setdefault(parent, set()).add(parts[depth].lower())
    roots = [d for d, kids in children.items() if {"train", "test"} <= kids]
    return sorted(roots, key=lambda d: (0 if d == "." else d.count("/") + 1, d))


def _inside(path: str, folder: str) -> str | None:
    """`path` relative to `folder` if it lies inside it, else None."""
    if folder == ".":
        return path
    prefix = folder + "/"
    return path[len(prefix):] if path.startswith(prefix) else None


def scan(raw: Path) -> Inventory:
    """Find the dataset root in `raw` (folder or zip) and place every image file.

    Raises PipelineError for a missing/ambiguous layout, an empty class folder or duplicate image
    ids; files the pipeline cannot place are returned as `bad` entries for the caller's policy.
    """
    kind, files, odd = list_entries(raw)
    ignored: Counter[str] = Counter()
    kept = []
    for f in files:
        reason = junk_reason(f)
        if reason:
            ignored[reason] += 1
        else:
            kept.append(f)

    roots = _find_roots(kept)
    if not roots:
        raise PipelineError(
            f"data.raw: no dataset found in {raw}. Expected a folder (or zip) holding train/ and "
            "test/, each with NORMAL/ and PNEUMONIA/ subfolders (Kaggle layout also has val/), "
            "e.g. chest_xray/train/NORMAL/IM-0115-0001.jpeg. A dataset without test/ is not the "
            "Kermany release: download the full archive."
        )
    depth = roots[0].count("/") if roots[0] != "." else -1
    same_depth = [r for r in roots if (r.count("/") if r != "." else -1) == depth]
    if len(same_depth) > 1:
        raise PipelineError(
            f"data.raw: {raw} holds several datasets side by side ({', '.join(same_depth)}). "
            "Keep one, or point data.raw at the one to use."
        )
    root = roots[0]
    nested = [r for r in roots[1:] if _inside(r, root) is not None]

    images: list[SourceImage] = []
    bad: list[BadEntry] = list(odd)
    merged_val: Counter[str] = Counter()
    for f in kept:
        rel = _inside(f, root)
        if rel is None:
            ignored["files outside the dataset root"] += 1
            continue
        if any(_inside(f, n) is not None for n in nested):
            ignored[f"nested copy of the dataset ({', '.join(nested)})"] += 1
            continue
        parts = PurePosixPath(rel).parts
        split_folder = parts[0].lower()
        if len(parts) == 1 or split_folder not in SPLIT_FOLDERS:
            ignored["files outside train/, val/ and test/"] += 1
            continue
        entry = _place(rel, parts, member=f)
        if isinstance(entry, BadEntry):
            bad.append(entry)
        else:
            images.append(entry)
            if split_folder == "val":
                merged_val[entry.label] += 1

    for split in ("train", "test"):
        for label in LABELS:
            if not any(i.split == split and i.label == label for i in images):
                where = f"{split}/{label}" + (f" (nor val/{label})" if split == "train" else "")
                raise PipelineError(
                    f"data.raw: no usable images in {where} of {raw}: the class folder is missing "
                    "or empty. The dataset is incomplete; download it again."
                )

    by_id: dict[str, list[str]] = {}
    for i in images:
        by_id.setdefault(i.image_id, []).append(i.source_file)
    dups = {k: v for k, v in by_id.items() if len(v) > 1}
    if dups:
        listed = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(dups.items())[:20])
        raise PipelineError(
            f"data.raw: {len(dups)} file name(s) occur more than once in the dataset ({listed}). "
            "Image ids (file stems) must be unique; remove or rename the copies."
        )
    return Inventory(kind, root, images, bad, dict(sorted(ignored.items())), dict(merged_val))


def _place(rel: str, parts: tuple[str, ...], member: str) -> SourceImage | BadEntry:
    """Turn `split/CLASS/name.ext` into a SourceImage, or say why it cannot be placed."""
    split = SPLIT_FOLDERS[parts[0].lower()]
    if len(parts) == 2:
        return BadEntry(rel, f"file directly in {parts[0]}/, outside the NORMAL/ and PNEUMONIA/ "
                        "class folders")
    label = parts[1].upper()
    if label not in LABELS:
        return BadEntry(rel, f"unknown class folder {parts[1]!r} (expected NORMAL or PNEUMONIA)")
    if len(parts) > 3:
        return BadEntry(rel, f"unexpected subfolder inside {parts[0]}/{parts[1]}/")
    name = PurePosixPath(parts[2])
    if name.suffix.lower() not in IMAGE_EXTENSIONS:
        return BadEntry(rel, f"unsupported file type {name.suffix or '(none)'!r} "
                        f"(expected {', '.join(IMAGE_EXTENSIONS)})")
    try:
        klass, patient_id = parse_name(name.stem, label)
    except ValueError as exc:
        return BadEntry(rel, str(exc))
    return SourceImage(rel, member, split, label, name.stem, klass, patient_id)


@contextmanager
def opener(raw: Path, kind: SourceKind) -> Iterator[Callable[[str], bytes]]:
    """Yield `read(member) -> bytes` for the source; a zip is opened once and read member by
    member, never extracted to disk."""
    if kind == "zip":
        with zipfile.ZipFile(raw) as zf:
            yield zf.read
    else:
        yield lambda member: (raw / member).read_bytes()
