"""`dvc exp run -S task=three_class` on the bundled sample: all six stages as a DVC experiment, the
three-class report, and the model answering with three probabilities through `pneumonia
predict` and a real `mlflow models serve` (one slow test: the pipeline, then the server)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline.test_dvc import TINY, dvc, make_project

CLASSES = ("normal", "bacteria", "virus")


@pytest.mark.slow  # ~3 min on 2 idle cores: six stages through DVC, then a model server
def test_three_class_experiment_runs_all_stages_and_serves_three_probabilities(
        tmp_path: Path) -> None:
    from tests.inference.servekit import payload, post, served
    from tests.trainkit import SAMPLE, stage_env

    repo = make_project(tmp_path / "repo", TINY | {"train.epochs": 1})
    proc = dvc(repo, "exp", "run", "-S", "task=three_class")
    log = proc.stdout + proc.stderr
    for stage in ("ingest", "validate", "balance", "split", "train", "evaluate"):
        assert f"Running stage '{stage}'" in log, log[-3000:]

    balance = json.loads((repo / "metrics/balance.json").read_text())
    assert balance["task"] == "three_class"
    assert set(balance["class_after"].values()) == {max(balance["class_before"].values())}
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert ev["task"] == "three_class"
    assert sum(ev[f"cause_{c}_support"] for c in CLASSES) == ev["n_test"]
    value = ev["cause_bacteria_vs_virus_accuracy"]
    assert ev["cause_bacteria_vs_virus_accuracy_ci_low"] <= value
    assert value <= ev["cause_bacteria_vs_virus_accuracy_ci_high"]
    assert "accuracy" in ev and "PNEUMONIA_recall_virus" in ev  # the binary view beside it
    table = (repo / "metrics/table3.md").read_text()
    assert "| actual \\ predicted | normal | bacteria | virus |" in table
    assert "Table III" in table or "paper" in table.lower()

    images = sorted((SAMPLE / "test" / "PNEUMONIA").iterdir())[:2]
    env = stage_env(repo)
    out = subprocess.run([sys.executable, "-m", "pneumonia", "predict", *map(str, images),
                          "--model", "models/model.keras", "--out", "p.json"], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((repo / "p.json").read_text())["predictions"]
    assert all({f"p_{c}" for c in CLASSES} <= set(r) for r in rows)
    assert all(r["prediction_set"] in ("NORMAL", "PNEUMONIA", "NORMAL|PNEUMONIA", "")
               for r in rows)

    registered = json.loads((repo / "metrics/registry.json").read_text())  # evaluate logged it
    with served(registered["model_uri"], f"sqlite:///{repo / 'mlflow.db'}",
                tmp_path / "serve.log") as url:
        status, body = post(url, payload([p.read_bytes() for p in images]))
    assert status == 200, body
    answers = body["predictions"]
    assert len(answers) == 2
    for a in answers:
        probs = [a[f"p_{c}"] for c in CLASSES]
        assert sum(probs) == pytest.approx(1, abs=1e-5)
        assert a["probability"] == pytest.approx(probs[1] + probs[2], abs=1e-6)
        assert a["class"] in CLASSES and a["label"] in ("NORMAL", "PNEUMONIA")
