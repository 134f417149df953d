"""A site's labelled images, read in any layout ingest reads, or refused with the reason.

Layouts (``layout``): ``kermany`` (the Kaggle / Mendeley release: train/ and test/ with class
folders; pneumonia.dataset.kermany), ``folders`` (any tree of NORMAL / PNEUMONIA class folders,
optionally a metadata CSV with ``path, patient_id``; pneumonia.dataset.folders), or ``auto``:
kermany when the source has that layout, else folders. A folder or a .zip. Splits given by the
layout (train/test folders) are ignored: every image is a labelled site image.

Patients: from the metadata CSV, else from Kermany-style file names (``person12_bacteria_3``,
``IM-0011-0001``), else every image is its own patient (said in the report). Images are
decoded exactly as ``pneumonia predict`` decodes them (pneumonia.inference.sources.to_input).

Refused (a PipelineError naming the files, nothing else done): any file that cannot be placed
or read or decoded (all listed at once), a set without both classes, and images that are byte
for byte in the model's training data (the sha256 of the source file against the training
manifest's ``sha256`` column; a re-encoded copy is not caught by this).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumonia.dataset import folders, kermany
from pneumonia.errors import PipelineError
from pneumonia.inference.sources import to_input
from pneumonia.params import DataParams
from pneumonia.paths import LABELS

LAYOUTS = ("auto", "kermany", "folders")
MAX_LISTED = 30


@dataclass(frozen=True)
class LabelledImage:
    source_file: str
    label: str  # NORMAL | PNEUMONIA
    patient_id: str
    sha256: str


@dataclass
class LabelledSet:
    source: str
    layout: str
    images: list[LabelledImage]
    arrays: np.ndarray  # (n, S, S, 1) float32, the model's input
    patients_from: str  # metadata | file names | none

    @property
    def y(self) -> np.ndarray:
        return np.array([LABELS.index(i.label) for i in self.images], dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        return np.array([i.patient_id for i in self.images])

    def counts(self) -> dict[str, int]:
        return {label: sum(i.label == label for i in self.images) for label in LABELS}

    def digest(self) -> str:
        """sha256 of the sorted (file sha256, label) lines: the labelled set's content hash,
        the same for the same images and labels in any folder layout or order."""
        lines = sorted(f"{i.sha256} {i.label}\n" for i in self.images)
        return hashlib.sha256("".join(lines).encode()).hexdigest()


def _listed(pairs: list[tuple[str, str]]) -> str:
    shown = "\n".join(f"  {f}: {r}" for f, r in pairs[:MAX_LISTED])
    more = f"\n  ... and {len(pairs) - MAX_LISTED} more" if len(pairs) > MAX_LISTED else ""
    return shown + more


def _inventory(raw: Path, layout: str, metadata: str):  # -> (Inventory, layout used)
    if layout in ("auto", "kermany"):
        try:
            return kermany.scan(raw), "kermany"
        except PipelineError:
            if layout == "kermany":
                raise
    data = DataParams(raw=str(raw), layout="folders", metadata=metadata)
    try:
        return folders.scan(raw, data), "folders"
    except PipelineError as exc:
        for label in LABELS:  # folders' own wording speaks of data.raw and params.yaml keys
            if f"no {label} images found" in str(exc):
                raise PipelineError(one_class(raw, label)) from None
        raise


def one_class(raw: Path, label: str, counts: str = "") -> str:
    return (f"{raw}: no {label} image in the labelled set{counts}. A threshold and a conformal "
            "quantile need labelled images of both classes: add images of the missing class in "
            f"a folder named {label}/. Nothing was calibrated or registered.")


def _patient(image_id: str, label: str, given: str, from_metadata: bool) -> tuple[str, bool]:
    """(patient id, whether it identifies a patient): the metadata's, else a Kermany name's."""
    if from_metadata:
        return given, True
    stem = image_id.rsplit("__", 1)[-1]  # folders' ids are path__segments
    try:
        return kermany.parse_name(stem, label)[1], True
    except ValueError:
        return given, False


def read(raw: Path | str, size: int, layout: str = "auto", metadata: str = "",
         max_megapixels: float | None = None) -> LabelledSet:
    """Scan, read, hash and decode every image of a labelled set (PipelineError on bad input)."""
    raw = Path(raw)
    if layout not in LAYOUTS:
        raise PipelineError(f"--layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if not raw.exists():
        raise PipelineError(f"{raw}: no such folder or .zip. Give the labelled site images: a "
                            "folder or .zip with NORMAL/ and PNEUMONIA/ class folders.")
    inv, used = _inventory(raw, layout, metadata)
    bad = [(b.source_file, b.reason) for b in inv.bad]
    images: list[LabelledImage] = []
    arrays: list[np.ndarray] = []
    named = 0
    with kermany.opener(raw, inv.kind) as read_member:
        for img in inv.images:
            try:
                data = read_member(img.member)
            except OSError as exc:
                bad.append((img.source_file, f"cannot read the file: {exc}"))
                continue
            try:
                arrays.append(to_input(data, size, max_megapixels))
            except ValueError as exc:
                bad.append((img.source_file, str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - listed with the others, never a trace
                bad.append((img.source_file, f"cannot decode it ({type(exc).__name__}: {exc})"))
                continue
            patient, real = _patient(img.image_id, img.label, img.patient_id,
                                     used == "kermany" or bool(metadata))
            named += real
            images.append(LabelledImage(img.source_file, img.label, patient,
                                        hashlib.sha256(data).hexdigest()))
    if bad:
        raise PipelineError(
            f"{len(bad)} file(s) of {raw} cannot be used (nothing was calibrated or "
            f"registered):\n{_listed(sorted(bad))}\nFix or remove them and run again.")
    out = LabelledSet(str(raw), used, images,
                      np.stack(arrays) if arrays else np.zeros((0, size, size, 1), np.float32),
                      "metadata" if used == "folders" and metadata else
                      "file names" if named == len(images) and images else "none")
    if out.patients_from == "none":  # every image its own patient, consistently
        out.images = [LabelledImage(i.source_file, i.label, i.source_file, i.sha256)
                      for i in out.images]
    missing = [label for label, n in out.counts().items() if n == 0]
    if missing:
        counts = ", ".join(f"{n} {k}" for k, n in out.counts().items())
        raise PipelineError(one_class(raw, missing[0], f" ({counts})"))
    return out


def training_overlap(labelled: LabelledSet, manifest: Path) -> list[str]:
    """Labelled files whose bytes are in the training manifest (`sha256` of each source file,
    `png_sha256` of its decoded PNG; the train split, which holds the validation originals)."""
    import pandas as pd

    frame = pd.read_csv(manifest, usecols=lambda c: c in ("sha256", "png_sha256", "split"),
                        dtype=str)
    if "sha256" not in frame.columns:
        raise PipelineError(f"{manifest}: no `sha256` column; give the ingest stage's "
                            "data/manifest.csv of the model's training data (--training-manifest)")
    if "split" in frame.columns:
        frame = frame[frame["split"] != "test"]
    # the source files' hashes, and those of ingest's decoded PNGs (data/images/...): a site
    # set assembled from a workspace's decoded training images is caught too
    seen = set(frame["sha256"]) | set(frame.get("png_sha256", pd.Series(dtype=str)).dropna())
    return [i.source_file for i in labelled.images if i.sha256 in seen]
