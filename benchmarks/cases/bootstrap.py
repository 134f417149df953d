"""Benchmark case: patient-grouped bootstrap of every test metric (pneumonia.stats.bootstrap).

    python benchmarks/cases/bootstrap.py            # prints the measurement
    python benchmarks/cases/bootstrap.py --quick    # fewer repetitions

Times ``metric_intervals`` (all 11 metrics, 2000 patient resamples) on synthetic data shaped like
the official test set: 624 images, 234 NORMAL / 390 PNEUMONIA, patients with 1-4 images each
(every image of a patient has the patient's label; probabilities correlated within a patient).
Reports the median wall time of several repetitions. Goal: <= 2 s on 2 CPU cores.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

N_IMAGES = 624
N_NORMAL = 234
N_RESAMPLES = 2000
GOAL_S = 2.0
GROUP_SIZES = (1, 2, 3, 4)
GROUP_SIZE_P = (0.55, 0.25, 0.12, 0.08)


def synthetic_test_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y_true, prob, groups) of 624 images: 234 NORMAL then 390 PNEUMONIA, patients of 1-4."""
    rng = np.random.default_rng(seed)
    y_parts, g_parts = [], []
    next_patient = 0
    for label, n in ((0, N_NORMAL), (1, N_IMAGES - N_NORMAL)):
        sizes = []
        while sum(sizes) < n:
            sizes.append(int(rng.choice(GROUP_SIZES, p=GROUP_SIZE_P)))
        sizes[-1] -= sum(sizes) - n
        g_parts.append(np.repeat(np.arange(next_patient, next_patient + len(sizes)), sizes))
        y_parts.append(np.full(n, label))
        next_patient += len(sizes)
    y = np.concatenate(y_parts)
    groups = np.concatenate(g_parts)
    patient_effect = rng.normal(0.0, 1.0, next_patient)[groups]
    logit = np.where(y == 1, 2.5, -2.0) + patient_effect + rng.normal(0.0, 1.0, N_IMAGES)
    prob = np.round(1.0 / (1.0 + np.exp(-logit)), 4)  # rounded: ties, as float32 outputs have
    return y, prob, groups


GOAL = ("patient bootstrap, 624 images x 2000 resamples, every metric, s", "<=", GOAL_S)
NEEDS = "work"  # synthetic data: no dataset preparation


def measure(work: Path | None = None, raw: Path | None = None, sz: dict | None = None,
            quick: bool = False) -> dict:
    """Median seconds of ``metric_intervals`` on the synthetic 624-image test set."""
    from pneumonia.stats.bootstrap import metric_intervals

    y, prob, groups = synthetic_test_set()
    # warm-up (imports)
    metric_intervals(y, prob, groups=groups, threshold=0.5, n_resamples=N_RESAMPLES, seed=0)
    times = []
    for rep in range(3 if quick else 7):
        start = time.perf_counter()
        metric_intervals(y, prob, groups=groups, threshold=0.5, n_resamples=N_RESAMPLES,
                         seed=rep)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "value": round(seconds, 4),
        "summary": f"{seconds:.2f} s median of {len(times)} (min {min(times):.2f}, "
        f"max {max(times):.2f}) for {N_IMAGES} images, {N_RESAMPLES} patient resamples",
        "seconds": seconds,
        "n_images": N_IMAGES,
        "n_patients": int(np.unique(groups).size),
        "n_resamples": N_RESAMPLES,
        "repetitions": len(times),
        "goal_s": GOAL_S,
    }


if __name__ == "__main__":
    print(json.dumps(measure(quick="--quick" in sys.argv[1:])))
