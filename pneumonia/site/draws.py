"""Patient-grouped draws: every split here keeps each patient's images on one side.

``draw(groups, k, rng)`` picks whole patients in a random order until k images are labelled (a
patient whose images would overshoot k is skipped, so the draw holds exactly k images whenever
the patients' sizes allow it); ``folds(groups, n, seed)`` deals the patients into n folds.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from pneumonia.stats.bootstrap import group_codes


def draw(groups: ArrayLike | None, n_images: int, k: int, rng: np.random.Generator
         ) -> np.ndarray:
    """(n,) bool: the labelled images, whole patients, k of them (or as close below as the
    patients' sizes allow)."""
    codes = group_codes(groups, n_images)
    sizes = np.bincount(codes)
    chosen = np.zeros(sizes.size, dtype=bool)
    total = 0
    for g in rng.permutation(sizes.size):
        if total + sizes[g] <= k:
            chosen[g] = True
            total += int(sizes[g])
            if total == k:
                break
    return chosen[codes]


def folds(groups: ArrayLike | None, n_images: int, n_folds: int, seed: int = 0) -> np.ndarray:
    """(n,) fold index of each image; a patient's images share one fold."""
    codes = group_codes(groups, n_images)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    n_folds = max(2, min(n_folds, n_groups))
    return (np.random.default_rng(seed).permutation(n_groups) % n_folds)[codes]
