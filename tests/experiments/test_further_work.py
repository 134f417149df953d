"""`pneumonia further-work`: recall by cause over seeds and the three-class summary, on small
planted inputs whose answers are known, and the docs' quoted blocks rewritten from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumonia.errors import PipelineError
from pneumonia.experiments import further_work


def _predictions(path: Path, called_virus: int, called_bacteria: int, normal_ok: int) -> None:
    """10 viral, 10 bacterial, 10 normal images; the first `called_*` pneumonias are called
    PNEUMONIA, the first `normal_ok` normals NORMAL."""
    rows = []
    for cause, called in (("virus", called_virus), ("bacteria", called_bacteria)):
        for i in range(10):
            rows.append((f"person{i}_{cause}_{i}", f"p{cause}{i}", "PNEUMONIA",
                         0.9 if i < called else 0.1))
    for i in range(10):
        rows.append((f"IM-{i:04d}-0001", f"n{i}", "NORMAL", 0.1 if i < normal_ok else 0.9))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["image_id", "patient_id", "actual", "probability"]).to_csv(
        path, index=False)


def _tree(tmp_path: Path) -> Path:
    # ablation arm "a": seeds with viral recall 0.6/0.7/0.8, bacterial 1.0: difference 0.3 mean
    for seed, v in ((1, 6), (2, 7), (3, 8)):
        _predictions(tmp_path / f"metrics/ablation/abl-densenet121-a-s{seed}.csv", v, 10, 9)
    for seed in (1, 2):
        _predictions(tmp_path / f"metrics/recipe/rcp-cnn-s{seed}.csv", 10, 10, 5)
    doc = tmp_path / "docs/further-work.md"
    doc.parent.mkdir(parents=True)
    doc.write_text("before\n<!-- quoted:recall-by-cause-ablation -->\nold\n<!-- /quoted -->\n"
                   "<!-- quoted:three-class -->\nold\n<!-- /quoted -->\nafter\n")
    return tmp_path


def test_recall_by_cause_over_seeds_is_each_seeds_recall_and_its_t_interval(tmp_path) -> None:
    root = _tree(tmp_path)
    arms = further_work.recall_by_cause(root)
    a = arms["ablation"]["densenet121-a"]
    assert a["virus"]["per_seed"] == [0.6, 0.7, 0.8]
    assert a["bacteria"]["mean"] == 1.0 and a["normal"]["mean"] == pytest.approx(0.9)
    assert a["bacteria_minus_virus"]["mean"] == pytest.approx(0.3)
    half = 4.302653 * 0.1 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert a["virus"]["ci_low"] == pytest.approx(0.7 - half, abs=1e-5)
    assert a["bacteria_minus_virus"]["ci_high"] == pytest.approx(0.3 + half, abs=1e-5)
    assert arms["recipe"]["cnn"]["normal"]["mean"] == 0.5


def test_write_all_rewrites_the_quoted_blocks_and_keeps_the_rest(tmp_path) -> None:
    root = _tree(tmp_path)
    run = root / "metrics/runs/tc-cpu-s1"
    run.mkdir(parents=True)
    ev = {f"cause_{m}{e}": v for m in ("bacteria_vs_virus_accuracy", "accuracy", "macro_f1",
                                       "bacteria_recall", "virus_recall", "normal_recall")
          for e, v in (("", 0.8), ("_ci_low", 0.7), ("_ci_high", 0.9))}
    (run / "evaluate.json").write_text(json.dumps(ev | {"accuracy": 0.85, "seed": 42}))
    further_work.write_all("cmd", [run], root)
    text = (root / "docs/further-work.md").read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "\nold\n" not in text
    assert "densenet121-a (3 seeds): bacterial 1.000 [1.000, 1.000], viral 0.700 [" in text
    assert "over 1 seed(s): 0.800 (one seed: no interval) (per run, patient-bootstrap " \
        "interval: tc-cpu-s1 0.800 [0.700, 0.900]); three-class accuracy 0.800 (one seed: no " \
        "interval); Kermany et al.: 0.907 (one seed: no interval over seeds yet)" in text
    assert json.loads((root / "metrics/causes.json").read_text())["command"] == "cmd"
    assert "| tc-cpu-s1 | 1 | 0.800 [0.700, 0.900]" in (root / "metrics/three-class.md").read_text()


def test_a_binary_run_or_a_missing_block_is_refused_by_name(tmp_path) -> None:
    root = _tree(tmp_path)
    run = root / "metrics/runs/binary"
    run.mkdir(parents=True)
    (run / "evaluate.json").write_text(json.dumps({"accuracy": 0.9}))
    with pytest.raises(PipelineError, match="not a `task: three_class` run"):
        further_work.three_class([run])
    with pytest.raises(PipelineError, match="quoted:three-class"):
        further_work.replace_quoted("no markers", "three-class", "x", "doc.md")
    with pytest.raises(PipelineError, match="not a finished run"):
        further_work.import_runs([root / "nowhere"], root)


def test_import_copies_the_evaluate_outputs_and_never_the_model(tmp_path) -> None:
    out = tmp_path / "runs_out/tc-cpu-s2"
    for rel in ("metrics/details/evaluate.json", "metrics/predictions.csv", "models/model.keras"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(rel)
    root = tmp_path / "repo"
    assert further_work.import_runs([out], root) == ["tc-cpu-s2"]
    dest = root / "metrics/runs/tc-cpu-s2"
    assert sorted(p.name for p in dest.iterdir()) == ["evaluate.json", "predictions.csv"]
    assert (dest / "evaluate.json").read_text() == "metrics/details/evaluate.json"
