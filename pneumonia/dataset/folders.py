"""Your own X-rays (`data.layout: folders`): any tree of class folders, any file names.

A hospital's export rarely looks like Kermany's release: nested folders per site or patient, file
names like `IMG 0001.dcm`, DICOM beside JPEG, and patient ids in a spreadsheet rather than in the
names. Here:

- The label of an image is the class folder on its path: a folder named like one of
  `data.normal_folders` or `data.pneumonia_folders` (case-insensitive), at any depth
  (`site A/Normal/2019/x.png`). A `label` column in the metadata CSV may supply it for images
  outside class folders, and must agree with the folder where both exist.
- The split: a `train`/`training`/`val`/`validation` folder (-> train) or a `test`/`testing`
  folder on the path, or the CSV's `split` column (train | val | test). When no image has one,
  ingest draws the test set (`data.test_fraction` of each label, whole patients, seeded by
  `data.test_seed`) before balancing can see it; a mix of given and missing splits is refused.
- Patients: the CSV's `patient_id` (`data.metadata`, a CSV inside data.raw with columns `path`,
  `patient_id` and optionally `split`, `label`, `cause`). Without it every image is its own
  patient, and validate warns that patient leakage cannot be checked.
- The cause (`class` column: bacteria | virus) comes from the CSV's `cause`; NORMAL images are
  `normal`, PNEUMONIA images without a cause `unspecified`.
- Files: PNG, JPEG and DICOM (by content, any extension or none, decoded by
  pneumonia.dataset.images / pneumonia.dataset.dicom). Documents (.txt, .csv, .pdf, ...) and
  system files are ignored and counted in the ingest report; any other file is a bad entry
  (`ingest.on_bad_file`).

Image ids are made from the path (`site_A__Normal__IMG_0001`), unique and file-name safe. Bad
metadata (a missing column, an unknown path, a label that contradicts its folder, ...) is one
PipelineError naming the CSV, its row and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pneumonia.dataset.kermany import (
    BadEntry,
    Inventory,
    SourceImage,
    junk_reason,
    list_entries,
    opener,
)
from pneumonia.errors import PipelineError
from pneumonia.params import DataParams
from pneumonia.paths import LABELS, UNSPECIFIED

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", "")  # "" : DICOM exports
DOCUMENT_EXTENSIONS = (".txt", ".md", ".csv", ".tsv", ".json", ".xml", ".xls", ".xlsx",
                       ".pdf", ".doc", ".docx", ".html", ".htm", ".log", ".ini", ".yaml", ".yml")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "train", "validation": "train",
               "test": "test", "testing": "test"}
CAUSES = ("bacteria", "virus")
REQUIRED_COLUMNS = ("path", "patient_id")
OPTIONAL_COLUMNS = ("split", "label", "cause")
_MAX_ID = 120  # characters of an image id (file names stay far below 255 bytes)


@dataclass(frozen=True)
class MetaRow:
    """One row of the metadata CSV (line = its line number in the file, header = 1)."""

    line: int
    patient_id: str
    split: str  # train | test | "" (not given)
    label: str  # NORMAL | PNEUMONIA | ""
    cause: str  # bacteria | virus | ""


def fold(name: str) -> str:
    """A folder name as class and split names are matched: Unicode NFKC-normalised, then
    case-folded, so a decomposed `Normál` (macOS file names), a full-width `ＮＯＲＭＡＬ` and
    `normal` written any case all match their name in params."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def image_id_of(rel: str) -> str:
    """A file-name-safe id from a path: folders joined by `__`, other characters `_`."""
    stem = str(PurePosixPath(rel).with_suffix("")) if PurePosixPath(rel).suffix.lower() in \
        IMAGE_EXTENSIONS else rel
    parts = [re.sub(r"[^A-Za-z0-9.-]+", "_", p).strip("._") or "_" for p in stem.split("/")]
    ident = "__".join(parts)
    if len(ident) > _MAX_ID:
        ident = ident[-_MAX_ID:].lstrip("_.")
    return ident


def _unique_ids(paths: list[str]) -> dict[str, str]:
    """Image id per path; ids two paths would share get an 8-hex suffix of their path's hash."""
    ids = {p: image_id_of(p) for p in paths}
    clashes = Counter(i.lower() for i in ids.values())  # case-insensitive file systems too
    return {p: i if clashes[i.lower()] == 1 else
            f"{i}-{hashlib.sha256(p.encode()).hexdigest()[:8]}" for p, i in ids.items()}


def _norm_path(value: str) -> str:
    """A CSV path as the scan spells it: posix, no leading ./ or /."""
    p = value.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p.lstrip("/")


def _metadata_in_raw(value: str, raw: Path, files: list[str]) -> str:
    """data.metadata as a path inside data.raw (posix, relative to it). Given relative to data.raw
    (the documented form); also an absolute path, or one relative to the current directory, that
    lies inside a data.raw folder (`-S data.metadata=$PWD/data/raw/site/patients.csv`). A path
    outside data.raw comes back as it is, and `scan` refuses it."""
    rel = _norm_path(value)
    if rel in files or raw.suffix.lower() == ".zip" or not raw.is_dir():
        return rel
    given = Path(value.strip()).expanduser()
    if given.is_absolute() or given.is_file():
        try:
            return given.resolve().relative_to(raw.resolve()).as_posix()
        except ValueError:
            return rel
    return rel


def read_metadata(data: bytes, where: str) -> dict[str, MetaRow]:
    """Parse the metadata CSV (bytes of `where`) into {path: row}; one clear error per mistake."""
    try:
        text = data.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError:
        raise PipelineError(
            f"data.metadata: {where} is not UTF-8 text. Save it as CSV (UTF-8) and run again."
        ) from None
    reader = csv.DictReader(io.StringIO(text))
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        hint = (" It looks ';'-separated: save it with commas." if len(header) == 1
                and ";" in header[0] else "")
        raise PipelineError(
            f"data.metadata: {where} lacks column(s) {', '.join(missing)} (its header: "
            f"{', '.join(header) or 'none'}). Required: path (relative to data.raw), "
            f"patient_id; optional: {', '.join(OPTIONAL_COLUMNS)}.{hint}"
        )
    rows: dict[str, MetaRow] = {}
    for raw_row in reader:
        line = reader.line_num
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw_row.items()
               if k is not None}
        where_row = f"{where} line {line}"
        path = _norm_path(row.get("path", ""))
        if not path:
            raise PipelineError(f"data.metadata: {where_row} has an empty path. Fill it in or "
                                "delete the row.")
        if path in rows:
            raise PipelineError(
                f"data.metadata: {where_row} repeats {path!r} (first at line "
                f"{rows[path].line}). Keep one row per image."
            )
        patient = row.get("patient_id", "")
        if not patient:
            raise PipelineError(f"data.metadata: {where_row} ({path}) has an empty patient_id. "
                                "Fill it in (an id of your own per patient is enough).")
        split = row.get("split", "").lower()
        if split and split not in SPLIT_NAMES:
            raise PipelineError(f"data.metadata: {where_row} ({path}): split {row['split']!r} "
                                "must be train, val, test or empty.")
        label = row.get("label", "").upper()
        if label and label not in LABELS:
            raise PipelineError(f"data.metadata: {where_row} ({path}): label {row['label']!r} "
                                f"must be one of {', '.join(LABELS)} or empty.")
        cause = row.get("cause", "").lower()
        if cause and cause not in (*CAUSES, "normal", UNSPECIFIED):
            raise PipelineError(f"data.metadata: {where_row} ({path}): cause {row['cause']!r} "
                                f"must be {', '.join(CAUSES)}, {UNSPECIFIED} or empty.")
        rows[path] = MetaRow(line, patient, SPLIT_NAMES.get(split, ""), label, cause)
    if not rows:
        raise PipelineError(f"data.metadata: {where} has a header but no rows.")
    return rows


def _folder_facts(rel: str, classes: dict[str, str]) -> tuple[set[str], set[str]]:
    """(labels, splits) that the folders on `rel`'s path name."""
    folders = [fold(p) for p in PurePosixPath(rel).parts[:-1]]
    return ({classes[f] for f in folders if f in classes},
            {SPLIT_NAMES[f] for f in folders if f in SPLIT_NAMES})


def _reconciled(from_folders: str, from_metadata: str, conflict: str) -> str:
    """A label or split given by the folders and/or the metadata CSV: the CSV's when set, and
    PipelineError(conflict) when both are set and disagree."""
    if not from_metadata:
        return from_folders
    if from_folders and from_folders != from_metadata:
        raise PipelineError(conflict)
    return from_metadata


def scan(raw: Path, data: DataParams) -> Inventory:
    """Place every image file of `raw` (folder or zip) by its folders and the metadata CSV.

    Raises PipelineError for bad metadata, a mix of given and missing splits, or a label with
    no images; files that cannot be placed are returned as `bad` entries. Images whose split
    is to be drawn have split "" (ingest draws it after decoding, when their hashes are known).
    """
    kind, files, odd = list_entries(raw)
    classes = {fold(n): "NORMAL" for n in data.normal_folders}
    classes |= {fold(n): "PNEUMONIA" for n in data.pneumonia_folders}
    meta_path = _metadata_in_raw(data.metadata, raw, files) if data.metadata.strip() else ""
    meta: dict[str, MetaRow] = {}
    if meta_path:
        if meta_path not in files:
            raise PipelineError(
                f"data.metadata: {data.metadata} not found in {raw}. The CSV must lie inside "
                "data.raw (DVC then tracks it with the images); give its path relative to "
                "data.raw, or set data.metadata: \"\" to go without patient ids."
            )
        with opener(raw, kind) as read:
            meta = read_metadata(read(meta_path), f"{raw}/{meta_path}")

    ignored: Counter[str] = Counter()
    candidates: list[str] = []
    bad: list[BadEntry] = list(odd)
    for f in files:
        reason = junk_reason(f)
        suffix = PurePosixPath(f).suffix.lower()
        if f == meta_path:
            ignored["the metadata CSV (data.metadata)"] += 1
        elif reason:
            ignored[reason] += 1
        elif suffix in DOCUMENT_EXTENSIONS:
            ignored[f"documents ({', '.join(DOCUMENT_EXTENSIONS[:6])}, ...)"] += 1
        elif suffix not in IMAGE_EXTENSIONS and not re.fullmatch(r"\.\d+", suffix):
            # `.123` is a DICOM export's numbered name (1.2.840....123), not an extension.
            bad.append(BadEntry(f, f"unsupported file type {suffix!r} (expected PNG, JPEG or "
                                   "DICOM)"))
        else:
            candidates.append(f)

    unknown = sorted(set(meta) - set(candidates))
    if unknown:
        row = meta[unknown[0]]
        close = [c for c in candidates if c.lower() == unknown[0].lower()]
        hint = f" (did you mean {close[0]!r}? paths are case-sensitive)" if close else ""
        linked = [b.source_file for b in odd if b.source_file.endswith("/")
                  and unknown[0].startswith(b.source_file)]
        if linked:
            hint = (f" (it lies under {linked[0]!r}, a symbolic link to a folder, which ingest "
                    "does not follow: copy the folder into data.raw)")
        raise PipelineError(
            f"data.metadata: {raw}/{meta_path} line {row.line} names {unknown[0]!r}, which is "
            f"not an image file in {raw}{hint}"
            + (f"; {len(unknown) - 1} more row(s) like it" if len(unknown) > 1 else "")
            + ". Paths are relative to data.raw: fix the path or delete the row."
        )
    if meta:
        absent = [c for c in candidates if c not in meta]
        if absent:
            raise PipelineError(
                f"data.metadata: {len(absent)} image(s) of {raw} have no row in "
                f"{raw}/{meta_path}, e.g. {absent[0]!r}. Add a row (path, patient_id) for each "
                "image, or move the images out of data.raw."
            )

    ids = _unique_ids(candidates)
    images: list[SourceImage] = []
    for f in candidates:
        labels, splits = _folder_facts(f, classes)
        row = meta.get(f)
        if len(labels) > 1:
            bad.append(BadEntry(f, f"its path names both labels ({', '.join(sorted(labels))}) "
                                   "in class folders"))
            continue
        if len(splits) > 1:
            bad.append(BadEntry(f, "its path has both a train and a test folder"))
            continue
        label = next(iter(labels), "")
        if row:
            label = _reconciled(label, row.label, (
                f"data.metadata: {raw}/{meta_path} line {row.line} labels {f!r} "
                f"{row.label}, but it lies in a {label} class folder. Correct the label "
                "column, or move the file to the right class folder."))
        if not label:
            names = ", ".join(sorted(classes))
            bad.append(BadEntry(f, f"no class folder on its path (folders named {names}, any "
                                   "case, Unicode NFKC-normalised: data.normal_folders / "
                                   "data.pneumonia_folders) and no label in data.metadata"))
            continue
        split = next(iter(splits), "")
        if row:
            split = _reconciled(split, row.split, (
                f"data.metadata: {raw}/{meta_path} line {row.line} puts {f!r} in "
                f"{row.split}, but it lies in a {split} folder. Correct the split column "
                "or move the file."))
        cause = row.cause if row else ""
        if label == "NORMAL":
            if cause and cause != "normal":
                raise PipelineError(
                    f"data.metadata: {raw}/{meta_path} line {row.line}: {f!r} is NORMAL but its "
                    f"cause is {cause!r}. Leave cause empty for NORMAL images.")
            klass = "normal"
        else:
            if cause == "normal":
                raise PipelineError(
                    f"data.metadata: {raw}/{meta_path} line {row.line}: {f!r} is PNEUMONIA but "
                    "its cause is 'normal'. Give bacteria, virus or leave it empty.")
            klass = cause or UNSPECIFIED
        patient = row.patient_id if row else ids[f]
        images.append(SourceImage(f, f, split, label, ids[f], klass, patient))

    given = [i for i in images if i.split]
    if given and len(given) < len(images):
        missing = next(i for i in images if not i.split)
        raise PipelineError(
            f"data.raw: {len(given)} image(s) of {raw} have a split (train/test folder or the "
            f"metadata's split column) and {len(images) - len(given)} have none, e.g. "
            f"{missing.source_file!r}. Give every image a split, or none (then ingest draws the "
            "test set: data.test_fraction)."
        )
    for label in LABELS:
        if not any(i.label == label for i in images):
            folders = ", ".join(data.normal_folders if label == "NORMAL"
                                else data.pneumonia_folders)
            raise PipelineError(
                f"data.raw: no {label} images found in {raw} (class folders named {folders}, "
                f"any case, Unicode NFKC-normalised). Name the class folders so, or list their names in "
                f"data.{label.lower()}_folders."
            )
    return Inventory(kind, ".", images, bad, dict(sorted(ignored.items())), {})
