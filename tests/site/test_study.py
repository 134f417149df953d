"""`pneumonia site study` on synthetic shifted predictions: what it reports is what it says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumonia.cli import main


def write_run(path: Path, seed: int, n: int = 300) -> pd.DataFrame:
    """A shifted site: every probability pushed up, so 0.5 calls many NORMAL images PNEUMONIA
    while the ranking stays good; 2 images per patient."""
    y = np.repeat(np.random.default_rng(0).uniform(size=n // 2) < 0.6, 2).astype(int)
    p = np.clip(0.35 * y + np.random.default_rng(seed).uniform(0.3, 0.65, n), 0, 1)
    frame = pd.DataFrame({"image_id": [f"i{i:04d}" for i in range(n)],
                          "patient_id": [f"p{i // 2}" for i in range(n)],
                          "actual": np.where(y == 1, "PNEUMONIA", "NORMAL"), "probability": p})
    frame.to_csv(path, index=False)
    return frame


def test_study_scores_the_unlabelled_rest_against_the_validation_threshold(
        tmp_path: Path) -> None:
    frames = [write_run(tmp_path / f"run-s{s}.csv", s) for s in (1, 2, 3)]  # same images
    for s in (1, 2, 3):
        (tmp_path / f"ev-s{s}.json").write_text(json.dumps({"conformal_qhat": 0.3}))
    out = tmp_path / "site"
    with pytest.raises(SystemExit) as ex:
        main(["site", "study", "--arm", f"a={tmp_path}/run-s*.csv", "--validation",
              f"a={tmp_path}/ev-s*.json", "--k", "40", "--splits", "6", "--alpha", "0.1",
              "--out", str(out)])
    assert ex.value.code == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    arm = doc["arms"]["a"]["k"]["40"]
    assert arm["labelled"]["mean"] == 40
    # the untouched 0.5 on the scored images: roughly the whole set's accuracy at 0.5
    y = (frames[0]["actual"] == "PNEUMONIA").to_numpy()
    whole = np.mean([np.mean((pd.read_csv(tmp_path / f"run-s{s}.csv")["probability"] >= 0.5)
                             == y) for s in (1, 2, 3)])
    assert arm["val_accuracy"]["mean"] == pytest.approx(whole, abs=0.03)
    # 40 labelled images find the shifted cut: clearly better than 0.5, below the diagnostic
    assert arm["site_accuracy"]["mean"] > arm["val_accuracy"]["mean"] + 0.05
    assert arm["site_accuracy"]["mean"] <= arm["best_accuracy"]["mean"] + 1e-9
    assert arm["val_coverage"]["mean"] is not None  # the validation quantile was used
    assert arm["lac_coverage"]["mean"] > 0.85
    assert arm["site_accuracy"]["seeds"] == 3 and arm["site_accuracy"]["over"] == "seeds"
    md = out.with_suffix(".md").read_text()
    assert "a, 3 seeds averaged" in md and "diagnostic" in md
