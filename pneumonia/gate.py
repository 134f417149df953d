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
4. **No slide**: test accuracy >= anchor - `evaluate.champion_margin`, where the anchor is the
   best test accuracy any champion reached on this test set. The anchor never moves down, so a
   chain of candidates each a little worse than the last cannot take the champion more than the
   margin below the best one (a comparison with the current champion alone would let it slide
   step by step).
5. **Not significantly worse than the champion**: the paired patient-grouped bootstrap of the
   accuracy difference (`pneumonia.stats.bootstrap.paired_deltas`, each model at its own
   threshold, 2000 resamples, 95 % interval) must not lie entirely below 0. The exact McNemar
   test on the same images is reported beside it.

The first model that passes the floor (and the anchor, if this test set had champions before)
becomes champion: there is nothing to compare it with. Anything else is `challenger`, with the
reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.paths import LABELS
from pneumonia.provenance import SAMPLE, UNKNOWN
from pneumonia.stats.bootstrap import paired_deltas
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
    """The best test accuracy any champion reached on one test set, and which version."""

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


def _below_anchor(accuracy: float, margin: float, anchor: Anchor | None,
                  details: dict[str, Any]) -> str | None:
    if anchor is None:
        return None
    details.update(anchor_accuracy=anchor.accuracy, anchor_version=anchor.version,
                   margin=margin)
    # A hair of tolerance: accuracies are ratios of counts recorded as decimal text.
    if accuracy < anchor.accuracy - margin - 1e-9:
        return (f"test accuracy {accuracy:.4f} is more than the margin evaluate.champion_margin "
                f"= {margin:g} below the anchor {anchor.accuracy:.4f} (the best accuracy a "
                f"champion reached on this test set, version {anchor.version}): the champion "
                "stays")
    return None


def decide(candidate: Entry, floor: float, margin: float, champion: Entry | None,
           anchor: Anchor | None = None) -> Decision:
    """The gate (see the module docstring). `anchor`: the best champion accuracy recorded on the
    candidate's test set (None when none); the champion's own accuracy counts too."""
    accuracy = candidate.accuracy
    details: dict[str, Any] = {"test_accuracy": accuracy, "min_accuracy": floor,
                               "margin": margin, "trained_on": candidate.dataset}
    if accuracy is None or not np.isfinite(accuracy) or accuracy < floor:
        shown = "undefined" if accuracy is None else f"{accuracy:.4f}"
        return Decision(CHALLENGER, f"test accuracy {shown} is below the floor "
                        f"evaluate.champion_min_accuracy = {floor:g}", details)
    if champion is None:
        if (why := _below_anchor(accuracy, margin, anchor, details)) is not None:
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
        if (why := _below_anchor(accuracy, margin, anchor, details)) is not None:
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
    cand = cand.assign(image_id=cand["image_id"].astype(str)).sort_values("image_id")
    champ = champ.assign(image_id=champ["image_id"].astype(str)).sort_values("image_id")
    y = _as_binary(cand["actual"])
    p_champ = champ["probability"].to_numpy(dtype=float)
    p_cand = cand["probability"].to_numpy(dtype=float)
    t_champ, t_cand = float(champion.threshold), float(candidate.threshold)
    # Each model at its own threshold: the one its recorded accuracy and served labels use.
    acc = paired_deltas(y, p_champ, p_cand, cand["patient_id"].astype(str).to_numpy(),
                        t_champ, t_cand, n_resamples=N_RESAMPLES, seed=SEED,
                        level=LEVEL)["accuracy"]
    mc = mcnemar_exact(y, (p_champ >= t_champ).astype(int), (p_cand >= t_cand).astype(int))
    details.update(common_test_images=int(y.size), champion_accuracy=acc["a"],
                   candidate_accuracy=acc["b"], accuracy_delta=acc["delta"],
                   delta_ci_low=acc["ci_low"], delta_ci_high=acc["ci_high"],
                   verdict=acc["verdict"], mcnemar_pvalue=mc["pvalue"], mcnemar_b=mc["b"],
                   mcnemar_c=mc["c"], thresholds=[t_champ, t_cand],
                   test="paired patient-grouped bootstrap of the accuracy difference, "
                        f"{N_RESAMPLES} resamples, {LEVEL:.0%} interval")
    summary = (f"on the same {y.size} test images accuracy {acc['b']:.4f} vs champion version "
               f"{champion.version}'s {acc['a']:.4f} (delta {acc['delta']:+.4f}, "
               f"{LEVEL:.0%} patient-bootstrap interval [{acc['ci_low']:+.4f}, "
               f"{acc['ci_high']:+.4f}]; McNemar p = {mc['pvalue']:.3g})")
    # The champion's own accuracy is an anchor too (a champion registered before anchors were
    # recorded, or the anchor's tags lost).
    if anchor is None or acc["a"] > anchor.accuracy:
        anchor = Anchor(float(acc["a"]), champion.version)
    if (why := _below_anchor(float(acc["b"]), margin, anchor, details)) is not None:
        return Decision(CHALLENGER, f"{why}; {summary}", details)
    if acc["verdict"] == "worse":
        return Decision(CHALLENGER, f"significantly worse than the champion: {summary}", details)
    return Decision(CHAMPION, "above the floor, within the margin of the anchor and not "
                    f"significantly worse than the champion: {summary}", details)
