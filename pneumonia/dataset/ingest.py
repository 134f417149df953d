"""Stage `ingest`: decode every image of the raw dataset once into small grayscale PNGs.

Reads `data.raw` (Kaggle/Mendeley folder or zip, see pneumonia/dataset/kermany.py; or, with
`data.layout: folders`, any tree of class folders, pneumonia/dataset/folders.py), writes
data/images/{train,test}/{NORMAL,PNEUMONIA}/{image_id}.png (8-bit grayscale, squashed to
data.image_size x data.image_size like Keras' `target_size`), data/manifest.csv (one row per image,
with the original size/mode and the source file's sha256) and data/ingest_report.json.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import multiprocessing
import shutil
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pneumonia.dataset import folders, kermany
from pneumonia.dataset.images import RESIZE_METHOD, decode_one, encode_png
from pneumonia.dataset.split import assign_validation, patient_groups
from pneumonia.errors import PipelineError
from pneumonia.files import spreadsheet_safe, workers, write_json
from pneumonia.params import DataParams, Params
from pneumonia.paths import IMAGES_DIR, INGEST_REPORT, LABELS, MANIFEST, MANIFEST_COLUMNS

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Decoded:
    """What decoding one source file gave: its facts, or why it is bad."""

    member: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    png_sha256: str = ""  # of the PNG written to data/images
    error: str = ""


# Per-process state for the worker pool: each process opens the source (a zip once) itself.
_worker: dict[str, object] = {}


def _init_worker(raw: Path, kind: kermany.SourceKind, size: int, max_megapixels: float) -> None:
    ctx = kermany.opener(raw, kind)
    _worker.update(read=ctx.__enter__(), ctx=ctx, size=size, max_megapixels=max_megapixels)


def _process(task: tuple[str, str]) -> Decoded:
    member, out = task
    try:
        data = _worker["read"](member)  # type: ignore[operator]
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        # Unreadable file (permissions, I/O error) or a zip member that fails its CRC check or
        # does not decompress: a bad file like any other, reported with the rest.
        return Decoded(member, error=f"cannot read the file: {type(exc).__name__}: {exc}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        gray, width, height, mode = decode_one(
            data, _worker["size"], _worker["max_megapixels"])  # type: ignore[arg-type]
    except ValueError as exc:
        return Decoded(member, sha256=digest, error=str(exc))
    out_path = Path(out)
    # The PNG's own hash goes into the manifest: it makes manifest.csv (and split.csv after it)
    # a fingerprint of every image, so later stages depend on the CSV instead of DVC re-hashing
    # thousands of files (see dvc.yaml).
    png = encode_png(gray)
    out_path.write_bytes(png)
    return Decoded(member, digest, width, height, mode, hashlib.sha256(png).hexdigest())


def output_path(img: kermany.SourceImage) -> Path:
    """Where ingest writes one source image: data/images/{split}/{label}/{image_id}.png."""
    return IMAGES_DIR / img.split / img.label / f"{img.image_id}.png"


def _decode_all(raw: Path, inv: kermany.Inventory, size: int, n_workers: int,
                max_megapixels: float) -> list[Decoded]:
    tasks = [
        (img.member, output_path(img).as_posix())
        for img in inv.images
    ]
    for folder in sorted({Path(out).parent for _, out in tasks}):  # once, not once per image
        folder.mkdir(parents=True, exist_ok=True)
    bar = {"total": len(tasks), "desc": "ingest", "unit": "img", "mininterval": 1.0}
    if n_workers == 1:
        _init_worker(raw, inv.kind, size, max_megapixels)
        try:
            return [_process(t) for t in tqdm(tasks, **bar)]
        finally:
            _worker["ctx"].__exit__(None, None, None)  # type: ignore[attr-defined]
            _worker.clear()
    with multiprocessing.Pool(n_workers, _init_worker,
                              (raw, inv.kind, size, max_megapixels)) as pool:
        return list(tqdm(pool.imap(_process, tasks, chunksize=32), **bar))


def run(params: Params) -> dict:
    """Run the ingest stage in the current directory; return the ingest report."""
    raw = Path(params.data.raw)
    own = params.data.layout == "folders"
    inv = folders.scan(raw, params.data) if own else kermany.scan(raw)
    log.info("dataset root %r in %s (%s): %d images", inv.root, raw, inv.kind, len(inv.images))
    draw_test = own and not any(img.split for img in inv.images)
    if draw_test:  # decoded into train/ first; the test set is drawn once the hashes are known
        inv.images = [dataclasses.replace(img, split="train") for img in inv.images]

    # DVC removes outs before a run, but a run by hand must not leave stale images behind.
    shutil.rmtree(IMAGES_DIR, ignore_errors=True)
    MANIFEST.unlink(missing_ok=True)
    n_workers = min(workers(params.ingest.workers), max(1, len(inv.images)))
    decoded = _decode_all(raw, inv, params.data.image_size, n_workers,
                          params.data.max_megapixels)

    by_member = {d.member: d for d in decoded}
    bad = [(b.source_file, b.reason) for b in inv.bad]
    rows = []
    for img in inv.images:
        d = by_member[img.member]
        if d.error:
            bad.append((img.source_file, d.error))
            output_path(img).unlink(missing_ok=True)
            continue
        rows.append({
            "image_id": img.image_id,
            "path": output_path(img).as_posix(),
            "label": img.label, "class": img.klass, "patient_id": img.patient_id,
            "split": img.split, "source_file": img.source_file, "sha256": d.sha256,
            "width": d.width, "height": d.height, "mode": d.mode, "png_sha256": d.png_sha256,
        })
    rows, conflicting = _drop_conflicting_copies(rows)
    for row in conflicting:
        Path(row["path"]).unlink(missing_ok=True)
        bad.append((row["source_file"], row["conflict"]))
    bad.sort()
    drawn = draw_test_split(rows, params.data) if draw_test and rows else None
    rows.sort(key=lambda r: (r["split"], r["label"], r["image_id"]))

    policy = params.ingest.on_bad_file
    failed = bool(bad) and policy == "fail"
    report = _report(params, inv, rows, bad, failed)
    if own:  # the kermany report keeps its keys (its bytes are in dvc.lock)
        report |= folders_report(params, rows, drawn)
    write_json(report, INGEST_REPORT)

    if failed:
        shutil.rmtree(IMAGES_DIR, ignore_errors=True)  # no half-ingested dataset
        listed = "\n".join(f"  {f}: {r}" for f, r in bad)
        raise PipelineError(
            f"{len(bad)} bad file(s) in {raw}:\n{listed}\n"
            "Fix or remove them, or set ingest.on_bad_file: skip in params.yaml to leave them "
            f"out (they are then listed in {INGEST_REPORT})."
        )
    if bad:
        log.warning("skipped %d bad file(s), listed in %s", len(bad), INGEST_REPORT)
    write_manifest(rows, MANIFEST)
    log.info("wrote %d images to %s and %s", len(rows), IMAGES_DIR, MANIFEST)
    return report


def _drop_conflicting_copies(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows kept, rows whose source bytes are also another row's under the other label).

    One X-ray cannot be both NORMAL and PNEUMONIA: a copy under the wrong class folder would be
    trained on (or tested on) with both labels (issue 35). Every copy of such an image is a bad
    file, named with its twin; ingest.on_bad_file decides (fail, the default, or skip: all
    copies left out and listed in the report). Byte-identical copies under one label are kept
    (validate reports them as leakage)."""
    labels: dict[str, set[str]] = {}
    files: dict[str, list[str]] = {}
    for r in rows:
        labels.setdefault(r["sha256"], set()).add(r["label"])
        files.setdefault(r["sha256"], []).append(r["source_file"])
    kept, dropped = [], []
    for r in rows:
        if len(labels[r["sha256"]]) > 1:
            twins = ", ".join(sorted(f for f in files[r["sha256"]] if f != r["source_file"]))
            dropped.append(r | {"conflict": (
                f"the same bytes as {twins}, labelled both NORMAL and PNEUMONIA: one image "
                "cannot have two labels; remove the copy under the wrong class folder")})
        else:
            kept.append(r)
    return kept, dropped


def draw_test_split(rows: list[dict], data: DataParams) -> dict:
    """`data.layout: folders` with no split given: move a share `data.test_fraction` of each
    label, whole patient groups (patients linked by byte-identical files, as the split stage
    groups them), to test; their PNGs move from data/images/train/ to data/images/test/.
    Drawn here, not in the split stage: balance (before split) must never see a test image."""
    import pandas as pd  # only here: the kermany path keeps ingest free of pandas' import time

    frame = pd.DataFrame(rows)
    groups, _ = patient_groups(frame)
    frame["group"] = frame.patient_id.map(groups)
    test_groups = assign_validation(frame, data.test_fraction, data.test_seed, group="group")
    for row, group in zip(rows, frame.group, strict=True):
        if group in test_groups:
            old = Path(row["path"])
            new = IMAGES_DIR / "test" / row["label"] / old.name
            new.parent.mkdir(parents=True, exist_ok=True)
            old.replace(new)
            row.update(split="test", path=new.as_posix())
    test = [r for r in rows if r["split"] == "test"]
    return {"test_fraction": data.test_fraction, "test_seed": data.test_seed,
            "test_images": len(test), "test_patient_groups": len(test_groups)}


def folders_report(params: Params, rows: list[dict], drawn: dict | None) -> dict:
    """What ingest did with your own tree (`data.layout: folders`): how labels, patients and the
    split were found, and the causes seen."""
    data = params.data
    return {
        "layout": "folders",
        "class_folders": {"NORMAL": list(data.normal_folders),
                          "PNEUMONIA": list(data.pneumonia_folders)},
        "metadata": data.metadata or None,
        "patient_ids": ("data.metadata" if data.metadata else
                        "none: every image is its own patient (set data.metadata)"),
        "patients": len({r["patient_id"] for r in rows}),
        "test_split": ({"drawn": drawn} if drawn is not None
                       else "given (train/test folders or the metadata's split column)"),
        "classes": dict(sorted(Counter(r["class"] for r in rows).items())),
    }


def write_manifest(rows: list[dict], path: Path) -> None:
    """The manifest as pandas' `to_csv(index=False, lineterminator="\\n")` writes it (pandas
    writes through the same csv module); pandas itself is not imported: its 0.3 s import was a
    third of the stage's serial time, which caps the speedup of a second worker."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)


def _report(
    params: Params, inv: kermany.Inventory, rows: list[dict],
    bad: list[tuple[str, str]], failed: bool,
) -> dict:
    per_class = Counter((r["split"], r["label"]) for r in rows)
    counts = {split: {label: per_class[split, label] for label in LABELS}
              for split in ("train", "test")}
    return {
        "status": "failed" if failed else "ok",
        "source": params.data.raw,
        "source_kind": inv.kind,
        "dataset_root": inv.root,
        "images": len(rows),
        "counts": counts,
        "merged_from_val": {label: inv.merged_val.get(label, 0) for label in LABELS},
        "source_modes": dict(sorted(Counter(r["mode"] for r in rows).items())),
        "ignored": inv.ignored,
        "on_bad_file": params.ingest.on_bad_file,
        "bad_files": [{"source_file": f, "reason": r} for f, r in bad],
        "image_size": params.data.image_size,
        "max_megapixels": params.data.max_megapixels,
        "resize_method": RESIZE_METHOD,
        "output_mode": "L (8-bit grayscale) PNG",
    }

