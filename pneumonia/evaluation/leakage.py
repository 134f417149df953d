"""The leak-free test subset: the test images validate's two kinds of leakage spare (a patient
also in train, a duplicate of a training image), under evaluate's reading of the NORMAL file names
and under the other one (`leakfree_alt_`), so a conclusion that depends on the reading shows in
table3.md."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pneumonia.dataset.validate import PATIENT_RULES, leaking_test_images
from pneumonia.errors import PipelineError
from pneumonia.evaluation.metrics import compute_metrics
from pneumonia.evaluation.reports import LeakfreeSubset
from pneumonia.paths import MANIFEST, SPLIT_CSV


def patient_rules(preferred: str) -> tuple[str, ...]:
    """validate.PATIENT_RULES with evaluate's reading (`evaluate.leakfree_patient_rule`) first."""
    return (preferred, *(r for r in PATIENT_RULES if r != preferred))


def leakage_of(rows: pd.DataFrame, rule: str = "strict") -> pd.DataFrame:
    """validate's two kinds of leakage for each test row (in the rows' order), from
    data/manifest.csv, the patients read by ``rule`` (validate.PATIENT_RULES): `patient`,
    `patient_in_train`, `duplicate_of_train`, `leakfree`."""
    if not MANIFEST.is_file():
        raise PipelineError(f"{MANIFEST} not found: run the ingest stage first (`dvc repro`).")
    manifest = pd.read_csv(MANIFEST, dtype=str, keep_default_na=False, na_values=[""])
    needed = {"image_id", "patient_id", "split", "sha256", "label"}
    missing = sorted(needed - set(manifest.columns))
    if missing:
        raise PipelineError(
            f"{MANIFEST} lacks column(s) {', '.join(missing)}: it was written by an older ingest "
            "stage. Run `dvc repro` to rebuild it."
        )
    leaks = leaking_test_images(manifest, rule).set_index("image_id")
    unknown = sorted(set(rows["image_id"]) - set(leaks.index))
    if unknown:
        raise PipelineError(
            f"{len(unknown)} test image(s) of {SPLIT_CSV} are not test images of {MANIFEST} "
            f"(e.g. {', '.join(unknown[:3])}): the two files come from different ingest runs. "
            "Run `dvc repro` to rebuild them together."
        )
    return leaks.loc[rows["image_id"]].reset_index()


def leakfree_metrics(leaks: dict[str, pd.DataFrame], rules: tuple[str, ...], y_true: np.ndarray,
                     prob: np.ndarray, threshold: float, boot: dict[str, Any]
                     ) -> tuple[dict[str, Any], list[LeakfreeSubset]]:
    """evaluate.json's `leakfree_*` and `leakfree_alt_*` keys (the test metrics on the leak-free
    subset under each reading in `rules`, and what each reading excluded), and the subsets."""
    metrics: dict[str, Any] = {}
    subsets = []
    for prefix, rule in zip(("leakfree_", "leakfree_alt_"), rules, strict=True):
        leak = leaks[rule]
        keep = leak["leakfree"].to_numpy(dtype=bool)
        patients = leak["patient"].astype(str).to_numpy()  # as the rule reads them
        subset = LeakfreeSubset(rule, y_true[keep], prob[keep], patients[keep],
                                int(leak["patient_in_train"].sum()),
                                int(leak["duplicate_of_train"].sum()))
        subsets.append(subset)
        metrics.update(compute_metrics(subset.y, subset.prob, threshold, subset.groups, **boot,
                                       prefix=prefix))
        metrics[f"{prefix}patient_rule"] = rule
        metrics[f"{prefix}excluded_patient_in_train"] = subset.excluded_patient_in_train
        metrics[f"{prefix}excluded_duplicate_of_train"] = subset.excluded_duplicate_of_train
    return metrics, subsets
