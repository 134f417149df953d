"""The champion gate's decision: may this evaluated model take the registry's `champion` alias?

A pure function of recorded facts (`decide`), so that every process computes the same decision
from the same registry (pneumonia.registry relies on that to settle races). In order:

1. **Floor**: test accuracy >= `evaluate.champion_min_accuracy`.
2. **Provenance** (pneumonia.provenance): a model trained on the bundled sample never displaces a
   champion trained on other data; a champion trained on the sample (a demo) is replaced by any
   model trained on other data that passes the floor and its anchor (their test sets differ, so
   there is nothing to compare).
3. **The same test set**: the candidate and the champion must have been evaluated on the same
   test images with the same labels and patients (as `pneumonia compare` requires); otherwise
   the comparison is impossible and the champion stays. Nothing is dropped silently.
4. **Defined primary metrics**: the candidate's test set has both classes and its accuracy and
   ROC AUC are defined. A model evaluated on a test set with a class of zero support (or an
   undefined ROC AUC) never becomes champion: nothing about it can be compared.
5. **Non-inferiority to the champion**: the paired patient-grouped bootstrap of the accuracy
   difference candidate - champion on the same images (``paired_accuracy``: each model at its
   own threshold, 2000 resamples, 95 % interval) must have its LOWER bound above
   -`evaluate.champion_margin`. "Not significantly worse" (the interval not wholly below 0) is
   not enough: it let a model truly 1.5 points worse through 61-63 % of the time on 624 images.
   The exact McNemar test on the same images is reported beside it.
6. **No slide**: the same non-inferiority test against the **anchor** version's predictions
   (the champion with the best test accuracy on this test set; it never moves down), when that
   is another version than the champion. The anchor's *predictions* are compared, paired, not
   its point accuracy: the best of many noisy accuracies is biased upwards, and a point anchor
   blocked equally good candidates more and more often as champions accumulated.

The error rates of rule 5 at the default margin, measured by Monte Carlo, are in
docs/statistics.md (`python -m benchmarks.gate_error_rates`).

The first model that passes the floor and rule 4 (and the anchor, if this test set had champions
before) becomes champion: there is nothing to compare it with. Anything else is `challenger`,
with the reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.paths import LABELS
from pneumonia.provenance import SAMPLE, UNKNOWN
from pneumonia.stats.bootstrap import patient_weights
from pneumonia.stats.significance import mcnemar_exact

CHAMPION, CHALLENGER = "champion", "challenger"
N_RESAMPLES = 2000
LEVEL = 0.95
SEED = 0  # the gate must give the same answer wherever it is computed (pneumonia.registry)


@dataclass
class Decision:
    alias: str  # champion | challenger
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Entry:
    """A registered version as the gate sees it. `predictions`: predictions.csv's columns
    (image_id, patient_id, actual, probability); `error`: why they could not be read."""

    version: str
    accuracy: float | None
    threshold: float
    predictions: pd.DataFrame | None = None
    dataset: str = UNKNOWN  # pneumonia.provenance: sample | full | other | unknown
    error: str | None = None


@dataclass(frozen=True)
class Anchor:
    """The best test accuracy any champion reached on one test set, and which version (the
    registry's replay keeps it; the gate compares with that version's predictions)."""

    accuracy: float
    version: str


def test_set_id(predictions: pd.DataFrame) -> str:
    """sha256 of the sorted (image_id, actual, patient_id) rows: equal iff the same test set."""
    rows = sorted(f"{i},{a},{p}" for i, a, p in zip(
        predictions["image_id"].astype(str), predictions["actual"].astype(str),
        predictions["patient_id"].astype(str), strict=True))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def test_set_difference(candidate: pd.DataFrame, champion: pd.DataFrame) -> str | None:
    """Why the two were not evaluated on the same test set (None when they were). The same
    check as `pneumonia compare` (pneumonia.experiments.compare.check_same_images), as a reason
    instead of an error: the gate records it and keeps the champion."""
    for name, frame in (("this model's", candidate), ("the champion's", champion)):
        if frame["image_id"].duplicated().any():
            return f"{name} predictions list a test image twice"
    a, b = set(candidate["image_id"].astype(str)), set(champion["image_id"].astype(str))
    if a != b:
        only_a, only_b = sorted(a - b), sorted(b - a)
        return (f"different test images ({len(a)} vs the champion's {len(b)}: {len(only_a)} "
                f"only here, e.g. {', '.join(only_a[:3]) or '-'}; {len(only_b)} only in the "
                f"champion's, e.g. {', '.join(only_b[:3]) or '-'})")
    cand = candidate.assign(image_id=candidate["image_id"].astype(str)).set_index("image_id")
    champ = champion.assign(image_id=champion["image_id"].astype(str)).set_index("image_id")
    champ = champ.loc[cand.index]
    for column in ("actual", "patient_id"):
        differ = cand[column].astype(str).to_numpy() != champ[column].astype(str).to_numpy()
        if differ.any():
            return (f"the same test images but {int(differ.sum())} with another `{column}` "
                    f"(e.g. {cand.index[differ][0]})")
    return None


def _as_binary(labels: pd.Series) -> np.ndarray:
    return (labels.astype(str) == LABELS[1]).to_numpy(dtype=int)


def undefined_primary(predictions: pd.DataFrame | None) -> str | None:
    """Why the primary metrics (accuracy, ROC AUC) of these test predictions are undefined
    (None when they are defined): no predictions, a class with zero support."""
    if predictions is None or not len(predictions):
        return "it has no test predictions"
    y = _as_binary(predictions["actual"])
    missing = [label for i, label in enumerate(LABELS) if not (y == i).any()]
    if missing:
        return (f"its test set has no {' and no '.join(missing)} image (zero support): ROC AUC "
                "and that class's recall are undefined")
    prob = predictions["probability"].to_numpy(dtype=float)
    if not np.isfinite(prob).all():
        return "its test predictions hold a probability that is not a number"
    return None


def paired_accuracy(y: np.ndarray, correct_a: np.ndarray, correct_b: np.ndarray,
                    groups: np.ndarray | None, n_resamples: int = N_RESAMPLES,
                    seed: int = SEED, level: float = LEVEL) -> dict[str, float]:
    """Accuracy of a and b on the same images and the patient-grouped bootstrap interval of
    b - a (the same resampled patients for both: paired). ``correct_*``: 1 where the model is
    right. The gate's test; benchmarks/gate_error_rates.py measures its error rates with this
    very function."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    w = patient_weights(groups, a.size, n_resamples, seed).astype(float)
    diff = (w @ (b - a)) / w.sum(axis=1)
    low, high = np.percentile(diff, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return {"a": float(a.mean()), "b": float(b.mean()), "delta": float(b.mean() - a.mean()),
            "ci_low": float(low), "ci_high": float(high)}


def non_inferior(ci_low: float, margin: float) -> bool:
    """The gate's rule: the lower bound of the paired difference lies above -margin."""
    return bool(ci_low > -margin - 1e-12)


def _compare(candidate: Entry, other: Entry, margin: float) -> tuple[dict[str, Any], str]:
    """The paired non-inferiority test of candidate vs other on their common test set."""
    assert candidate.predictions is not None and other.predictions is not None
    cand = candidate.predictions.assign(
        image_id=candidate.predictions["image_id"].astype(str)).sort_values("image_id")
    oth = other.predictions.assign(
        image_id=other.predictions["image_id"].astype(str)).sort_values("image_id")
    y = _as_binary(cand["actual"])
    t_oth, t_cand = float(other.threshold), float(candidate.threshold)
    # Each model at its own threshold: the one its recorded accuracy and served labels use.
    pred_oth = (oth["probability"].to_numpy(dtype=float) >= t_oth).astype(int)
    pred_cand = (cand["probability"].to_numpy(dtype=float) >= t_cand).astype(int)
    acc = paired_accuracy(y, pred_oth == y, pred_cand == y,
                          cand["patient_id"].astype(str).to_numpy())
    mc = mcnemar_exact(y, pred_oth, pred_cand)
    ok = non_inferior(acc["ci_low"], margin)
    facts = {"version": other.version, "accuracy": acc["a"], "candidate_accuracy": acc["b"],
             "delta": acc["delta"], "ci_low": acc["ci_low"], "ci_high": acc["ci_high"],
             "non_inferior": ok, "mcnemar_pvalue": mc["pvalue"], "mcnemar_b": mc["b"],
             "mcnemar_c": mc["c"], "thresholds": [t_oth, t_cand], "images": int(y.size)}
    text = (f"accuracy {acc['b']:.4f} vs version {other.version}'s {acc['a']:.4f} on the same "
            f"{y.size} test images (delta {acc['delta']:+.4f}, {LEVEL:.0%} paired patient-"
            f"bootstrap interval [{acc['ci_low']:+.4f}, {acc['ci_high']:+.4f}]; McNemar p = "
            f"{mc['pvalue']:.3g}): lower bound {'above' if ok else 'not above'} -margin = "
            f"{-margin:g}")
    return facts, text


def _against_anchor(candidate: Entry, margin: float, anchor: Anchor | None,
                    anchor_entry: Entry | None, champion_version: str | None,
                    details: dict[str, Any]) -> str | None:
    """Rule 6: None when there is no anchor to test against (or it is the champion, already
    tested) or the candidate is non-inferior to it; else why it is not."""
    if anchor is None:
        return None
    details.update(anchor_accuracy=anchor.accuracy, anchor_version=anchor.version)
    if anchor.version == champion_version or anchor.version == candidate.version:
        return None
    if anchor_entry is None or anchor_entry.error or anchor_entry.predictions is None:
        why = "no predictions" if anchor_entry is None else (anchor_entry.error
                                                             or "no predictions")
        return (f"cannot compare with the anchor, version {anchor.version} (the best champion "
                f"on this test set; {why}): the champion stays")
    if (diff := test_set_difference(candidate.predictions, anchor_entry.predictions)) is not None:
        return f"not comparable with the anchor, version {anchor.version}: {diff}"
    facts, text = _compare(candidate, anchor_entry, margin)
    details["anchor_test"] = facts
    if not facts["non_inferior"]:
        return (f"not shown non-inferior to the anchor, version {anchor.version} (the best "
                f"champion on this test set, compared by its predictions): {text}; the champion "
                "stays")
    return None


def decide(candidate: Entry, floor: float, margin: float, champion: Entry | None,
           anchor: Anchor | None = None, anchor_entry: Entry | None = None) -> Decision:
    """The gate (see the module docstring). `anchor`: the champion with the best accuracy
    recorded on the candidate's test set (None when none) and `anchor_entry` that version as
    the gate sees it (its predictions: rule 6 compares with them)."""
    accuracy = candidate.accuracy
    details: dict[str, Any] = {"test_accuracy": accuracy, "min_accuracy": floor,
                               "margin": margin, "trained_on": candidate.dataset,
                               "rule": "non-inferiority: lower bound of the paired accuracy "
                                       "difference > -margin"}
    if accuracy is None or not np.isfinite(accuracy) or accuracy < floor:
        shown = "undefined" if accuracy is None else f"{accuracy:.4f}"
        return Decision(CHALLENGER, f"test accuracy {shown} is below the floor "
                        f"evaluate.champion_min_accuracy = {floor:g}", details)
    if (why := undefined_primary(candidate.predictions)) is not None:
        return Decision(CHALLENGER, f"a primary metric is undefined: {why}. A model whose "
                        "evaluation cannot be compared never becomes champion", details)
    champ_version = None if champion is None else champion.version
    if champion is None:
        if (why := _against_anchor(candidate, margin, anchor, anchor_entry, None,
                                   details)) is not None:
            return Decision(CHALLENGER, why, details)
        return Decision(CHAMPION, f"first model above the floor ({accuracy:.4f} >= {floor:g}): "
                        "there was no champion", details)
    details["champion_version"] = champion.version
    details["champion_trained_on"] = champion.dataset
    if candidate.dataset == SAMPLE and champion.dataset not in (SAMPLE, UNKNOWN):
        return Decision(CHALLENGER, f"trained on the bundled sample, while champion version "
                        f"{champion.version} was trained on the {champion.dataset} dataset: a "
                        "demo model never displaces it", details)
    if champion.dataset == SAMPLE and candidate.dataset not in (SAMPLE, UNKNOWN):
        if (why := _against_anchor(candidate, margin, anchor, anchor_entry, None,
                                   details)) is not None:
            return Decision(CHALLENGER, why, details)
        return Decision(CHAMPION, f"above the floor ({accuracy:.4f} >= {floor:g}) and trained on "
                        f"the {candidate.dataset} dataset: replaces champion version "
                        f"{champion.version}, a demo model trained on the bundled sample",
                        details)
    if champion.error or champion.predictions is None:
        return Decision(CHALLENGER, f"cannot compare with champion version {champion.version} "
                        f"({champion.error or 'no predictions'}): the champion stays", details)
    cand, champ = candidate.predictions, champion.predictions
    assert cand is not None, "the candidate's predictions are the evaluate stage's own"
    if (why := test_set_difference(cand, champ)) is not None:
        return Decision(CHALLENGER, f"not comparable with champion version {champion.version}: "
                        f"{why}. The gate compares models on the same test set only; the "
                        "champion stays", details)
    facts, summary = _compare(candidate, champion, margin)
    details.update(common_test_images=facts["images"], champion_accuracy=facts["accuracy"],
                   candidate_accuracy=facts["candidate_accuracy"],
                   accuracy_delta=facts["delta"], delta_ci_low=facts["ci_low"],
                   delta_ci_high=facts["ci_high"], non_inferior=facts["non_inferior"],
                   mcnemar_pvalue=facts["mcnemar_pvalue"], mcnemar_b=facts["mcnemar_b"],
                   mcnemar_c=facts["mcnemar_c"], thresholds=facts["thresholds"],
                   test="paired patient-grouped bootstrap of the accuracy difference, "
                        f"{N_RESAMPLES} resamples, {LEVEL:.0%} interval; non-inferior when its "
                        "lower bound > -margin")
    if not facts["non_inferior"]:
        return Decision(CHALLENGER, f"not shown non-inferior to champion version "
                        f"{champion.version} (margin evaluate.champion_margin = {margin:g}): "
                        f"{summary}", details)
    if (why := _against_anchor(candidate, margin, anchor, anchor_entry, champ_version,
                               details)) is not None:
        return Decision(CHALLENGER, f"{why}; against the champion: {summary}", details)
    return Decision(CHAMPION, f"above the floor and non-inferior to champion version "
                    f"{champion.version}" + ("" if anchor is None or anchor.version in (
                        champ_version, candidate.version) else
                        f" and to the anchor, version {anchor.version}")
                    + f" (margin {margin:g}): {summary}", details)
