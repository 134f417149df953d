"""Benchmark case `robustness`: wall time of `pneumonia robustness`' work on the official test set
(the clean images and all 14 shifts: shifting, encoding, decoding with the pipeline's code,
DenseNet201 forward passes, patient bootstraps), at 224 px. The weights are random: timings do
not depend on them (and no trained model may exist on the machine).

Not one of `make bench`'s CASES (it would add minutes to every run); run it alone:

    python -m benchmarks.cases.robustness                     # full test set, densenet201, 224 px
    python -m benchmarks.cases.robustness --raw DIR --size 128 --backbone densenet121

The test images are the files of data.raw's test/ folder (the shared copy: 624 JPEGs, mostly
224 px already), labels from their folder, patients from their names (the ingest stage's rule).
Also reported: the CPU seconds other processes used meanwhile (contention).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import busy_cpu_s, find_raw, machine

GOAL = ("seconds for the 624 test images x 15 conditions at 224 px", "<=", 600.0)  # informative


def test_images(raw: Path) -> tuple[list[bytes], list[str], list[int], list[str]]:
    """(file bytes, image ids, labels 0/1, patient ids) of raw's test/ folder."""
    from pneumonia.dataset.kermany import parse_name

    files, ids, labels, patients = [], [], [], []
    for label_index, label in enumerate(("NORMAL", "PNEUMONIA")):
        for path in sorted((raw / "test" / label).iterdir()):
            if path.suffix.lower() not in (".jpeg", ".jpg", ".png"):
                continue
            _, patient = parse_name(path.stem, label)
            files.append(path.read_bytes())
            ids.append(path.stem)
            labels.append(label_index)
            patients.append(patient)
    return files, ids, labels, patients


def measure(raw: Path, backbone: str, size: int, batch: int, workers: int,
            n_shifts: int | None = None) -> dict[str, Any]:
    import os

    import numpy as np

    from benchmarks.common import bench_model
    from pneumonia.evaluation.robustness import SHIFTS, score_shifts

    shifts = SHIFTS[:n_shifts] if n_shifts else SHIFTS
    files, ids, labels, patients = test_images(raw)
    model = bench_model(backbone, size)
    model.predict_on_batch(np.zeros((batch, size, size, 1), "float32"))  # trace
    busy0, own0, t = busy_cpu_s(), os.times(), time.perf_counter()
    report = score_shifts(model, files, ids, np.array(labels), np.array(patients), 0.5, shifts,
                          2000, 0, batch, workers)
    wall = time.perf_counter() - t
    own1 = os.times()
    own = (own1.user + own1.system) - (own0.user + own0.system)
    others = max(0.0, busy_cpu_s() - busy0 - own)
    n = len(files) * (len(shifts) + 1)
    return {
        "value": wall,
        "summary": (f"{backbone} {size} px, {len(files)} test images x {len(shifts) + 1} "
                    f"conditions: {wall:.0f} s ({n / wall:.1f} img/s incl. shifting, decoding "
                    f"and bootstraps); other processes kept {others / wall:.2f} cores busy"),
        "backbone": backbone, "image_size": size, "images": len(files),
        "conditions": len(shifts) + 1, "seconds": round(wall, 1),
        "other_busy_cores": round(others / wall, 2), "machine": machine(),
        "clean_accuracy_random_weights": report["clean"]["accuracy"]["value"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default=None, help="dataset folder with test/NORMAL, "
                        "test/PNEUMONIA (default: as `make bench` finds it)")
    parser.add_argument("--backbone", default="densenet201")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shifts", type=int, default=None,
                        help="only the first N shifts (a quicker, partial measurement)")
    args = parser.parse_args(argv)
    result = measure(find_raw(args.raw, False), args.backbone, args.size, args.batch,
                     args.workers, args.shifts)
    print(result["summary"])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
