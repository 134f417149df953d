"""`pneumonia site adapt-study` end to end on a tiny trained-run layout: AdaBN and TTA rows,
paired columns that agree with each other, one section per family, reuse of measured runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.site.conftest import write_pngs


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    import keras

    from pneumonia.model.network import build_model
    from pneumonia.params import ModelParams

    data = tmp_path / "data"
    rows = []
    for subset, shift in (("test", 40), ("val", 0)):
        for label, level in (("NORMAL", 90), ("PNEUMONIA", 150)):
            paths = write_pngs(data / "images" / subset / label, 12, level + shift,
                               hash((subset, label)) % 1000, f"{subset}{label}")
            rows += [{"path": f"data/images/{subset}/{label}/{p.name}", "subset": subset,
                      "label": label, "patient_id": f"{subset}{label}{i // 2}",
                      "source_image_id": None} for i, p in enumerate(paths)]
    pd.DataFrame(rows).to_csv(data / "split.csv", index=False)
    keras.utils.set_random_seed(0)
    model = build_model(ModelParams(backbone="small_cnn", weights="none", dense_units=8,
                                    dropout=0.0), 32, None)
    run = tmp_path / "run-s1"
    (run / "models").mkdir(parents=True)
    model.save(run / "models" / "model.keras")
    return data, run


@pytest.mark.slow
def test_adapt_study_writes_paired_levers_per_family_and_reuses_runs(tmp_path) -> None:
    from pneumonia.cli import main

    data, run = _layout(tmp_path)
    out = tmp_path / "out" / "site-adapt"
    argv = ["site", "adapt-study", str(run), "--data", str(data), "--splits", "2",
            "--sizes", "4", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--family", "tiny"])
    assert exit_.value.code == 0
    doc = json.loads(out.with_suffix(".json").read_text())["families"]["tiny"]
    rows = doc["per_run"]["run-s1"]
    assert "test, adapted on 4" in rows and "test, TTA (9 views), no adaptation" in rows
    # the TTA-on-AdaBN rows compare one lever against two references: the lever column agrees
    for a, b in zip(rows["test, AdaBN on the whole half + TTA"],
                    rows["test, TTA added to AdaBN (whole half)"], strict=True):
        assert a["accuracy"] == b["accuracy"] and a["roc_auc"] == b["roc_auc"]
    # class-balanced AdaBN: one lever against the unadapted model and against plain AdaBN on
    # the same halves, on both sites (the control included)
    for site in ("test", "validation (control)"):
        for a, b in zip(rows[f"{site}, class-balanced AdaBN on the whole half"],
                        rows[f"{site}, class-balanced AdaBN against plain AdaBN (whole half)"],
                        strict=True):
            assert a["accuracy"] == b["accuracy"] and a["roc_auc"] == b["roc_auc"]
    assert doc["class_balanced"] is True
    cond = doc["conditions"]["validation (control), adapted on the whole half"]["accuracy"]
    per = [r["accuracy"] - r["base_accuracy"]
           for r in rows["validation (control), adapted on the whole half"]]
    assert cond["difference"]["mean"] == pytest.approx(np.mean(per))
    assert cond["difference"]["over"] == "splits"  # one seed: the range over splits
    md = out.with_suffix(".md").read_text()
    assert "## tiny: test, TTA (9 views), no adaptation" in md and "| metric | plain | TTA |" in md
    assert "| metric | AdaBN | class-balanced AdaBN |" in md
    # a second family is added beside the first; reusing the file measures nothing again
    with pytest.raises(SystemExit):
        main([*argv, "--family", "other", "--reuse", str(out.with_suffix(".json"))])
    with pytest.raises(SystemExit):
        main([*argv, "--family", "tiny", "--reuse", str(out.with_suffix(".json"))])
    every = json.loads(out.with_suffix(".json").read_text())["families"]
    assert sorted(every) == ["other", "tiny"] and every["other"]["reused"] == []
    # nothing measured again: the section keeps its measurement's time and results
    assert every["tiny"]["seconds"] == doc["seconds"] and every["tiny"]["per_run"] == doc["per_run"]
    assert "# tiny" in out.with_suffix(".md").read_text()
    # two copies of one model averaged are that model: averaging buys exactly nothing
    twin = tmp_path / "run-s2"
    shutil.copytree(run, twin)
    with pytest.raises(SystemExit):
        main(["site", "adapt-study", str(run), str(twin), "--data", str(data), "--splits", "2",
              "--sizes", "4", "--out", str(out), "--family", "pair", "--ensemble", "--no-tta"])
    pair = json.loads(out.with_suffix(".json").read_text())["families"]["pair"]
    gain = pair["conditions"]["test, 2 seeds averaged vs one seed (mean of the seeds)"]
    assert gain["accuracy"]["difference"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert len(pair["ensemble"]["test, 2 seeds averaged, AdaBN on the whole half"]) == 2
