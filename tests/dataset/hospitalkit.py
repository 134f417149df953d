"""A small hospital-like export built from the real sample X-rays, for `data.layout: folders`.

Nested site/patient folders, class folders in mixed case at different depths, odd file names
(spaces, '#', brackets, no extension), PNG, JPEG and 16-bit DICOM files, a README, and a
metadata CSV with patient ids in which one patient has images in both class folders.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from PIL import Image

from tests.inference.dicomkit import dicom16_of, gray_of

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "chest_xray"
N_PER_LABEL = 24
SPANNING = "P-007"  # the patient with a NORMAL and a PNEUMONIA image (a follow-up)


def _encode(src: Path, kind: str) -> bytes:
    if kind == "dcm":
        return dicom16_of(gray_of(src))
    with Image.open(src) as im:
        out = io.BytesIO()
        im.convert("L").save(out, format="PNG" if kind == "png" else "JPEG", quality=95)
        return out.getvalue()


def make_hospital(root: Path, metadata: bool = True) -> list[dict[str, str]]:
    """Write the tree under `root`; return the metadata rows (written to root/patients.csv
    when `metadata`)."""
    normal = sorted((SAMPLE / "train" / "NORMAL").glob("*.jpeg"))[:N_PER_LABEL]
    pneumonia = sorted((SAMPLE / "train" / "PNEUMONIA").glob("*.jpeg"))[:N_PER_LABEL]
    rows = []
    for label, sources in (("NORMAL", normal), ("PNEUMONIA", pneumonia)):
        for k, src in enumerate(sources):
            patient = f"P-{(k // 2) + (0 if label == 'NORMAL' else 20):03d}"
            if label == "PNEUMONIA" and k == 0:
                patient = SPANNING  # also has NORMAL images (k = 14, 15 above)
            site = "Site A" if k % 2 == 0 else "site_b"
            kind = ("dcm", "png", "jpeg")[k % 3]
            folder = {"NORMAL": ("Normal", "NORMAL"), "PNEUMONIA": ("Pneumonia", "pneumonia")}[
                label][k % 2]
            name = {"dcm": f"IMG {k:04d}.dcm", "png": f"scan #{k} (copy).PNG",
                    "jpeg": f"x-ray [{k}].jpg"}[kind]
            if k == 5:
                name = f"1.2.840.{k}"  # a DICOM export's numbered name, no extension
                kind = "dcm"
            rel = f"export 2024/{site}/{folder}/{patient} study/{name}" if k % 4 < 2 else \
                f"export 2024/{site}/{folder}/{name}"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_encode(src, kind))
            cause = "" if k % 3 == 0 else ("bacteria" if k % 3 == 1 else "virus")
            rows.append({"path": rel, "patient_id": patient,
                         "label": label if k % 5 == 0 else "",
                         "cause": cause if label == "PNEUMONIA" else ""})
    (root / "README.txt").write_text("Exported from PACS, anonymised.\n")
    if metadata:
        write_csv(root / "patients.csv", rows)
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> None:
    columns = columns or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
