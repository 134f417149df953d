"""`make demo` runs all six stages as a DVC experiment, leaves params.yaml alone, and a second run
re-runs nothing (DVC's run cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline.test_dvc import git, make_project

# Below the worst demo measured across CPUs, seeds and oneDNN on/off (see test_demo_twice).
DEMO_MIN_ACCURACY = 0.70
DEMO_MIN_AUC = 0.75


def _demo(repo: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return subprocess.run(
        [sys.executable, "-m", "pneumonia", "demo"], cwd=repo, env=env, capture_output=True, text=True,
        check=False,
    )


@pytest.mark.slow
def test_demo_twice(tmp_path: Path) -> None:
    repo = make_project(tmp_path, {})  # params.yaml as committed: the paper's configuration
    params_before = (repo / "params.yaml").read_bytes()

    first = _demo(repo)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    for stage in ("ingest", "validate", "balance", "split", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out
    # Table III printed beside this run's numbers: the sample's 40 NORMAL test images, and the
    # run's accuracy as the experiment recorded it in metrics/evaluate.json.
    assert ("| metric | paper [95 % CI] | this run [95 % CI] | run - paper [95 % CI] | verdict |"
            in first.stdout)
    assert "| NORMAL support | 234 | 40 |" in first.stdout
    ref = git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    ref = [r for r in ref if not r.startswith("refs/exps/exec")][-1]
    evaluation = json.loads(git(repo, "show", f"{ref}:metrics/evaluate.json"))
    accuracy = evaluation["accuracy"]
    accuracy_row = next(line for line in first.stdout.splitlines()
                        if line.startswith("| accuracy | 0.96 ["))
    assert f"| {accuracy:.3f} [" in accuracy_row
    # The demo shows the method learning, not a constant classifier (60 of the 100 test images
    # are PNEUMONIA: a constant model scores 0.60 / AUC 0.5): both classes predicted, and
    # accuracy and ROC AUC above bars that hold on every CPU it was measured on. TensorFlow's
    # float results differ across CPUs (oneDNN's code paths), and this tiny from-scratch run
    # amplifies them. Today's demo (small_cnn with the CPU recipe's levers): on an AMD EPYC
    # (2026-12-07) metrics/runs/demo-s42, -s1, -s2 (committed; docs/experiments.md); on an Intel
    # Xeon (AMX), 2026-12-01, not committed: seeds 42 / 1 / 2 gave accuracy 0.87 / 0.86 / 0.88,
    # 0.87 / 0.86 / 0.86 there with TF_ENABLE_ONEDNN_OPTS=0, ROC AUC 0.917 at worst. DenseNet121
    # with the same levers gave 0.81-0.89 / 0.892 at worst there; the configuration before both
    # gave 0.86 / 0.83 / 0.86 on an AMD EPYC, 0.76 / 0.82 / 0.84 on the Intel, 0.84 / 0.84 / 0.85
    # with oneDNN off, ROC AUC 0.806 at worst. The bars sit below the worst of all of those, with
    # room for the CPUs not measured (docs/experiments.md).
    predicted = git(repo, "show", f"{ref}:metrics/predictions.csv").splitlines()[1:]
    assert {line.split(",")[4] for line in predicted} == {"NORMAL", "PNEUMONIA"}
    assert accuracy >= DEMO_MIN_ACCURACY and evaluation["roc_auc"] >= DEMO_MIN_AUC, evaluation
    assert "dvc exp show" in first.stdout and "make mlflow-ui" in first.stdout

    assert (repo / "params.yaml").read_bytes() == params_before
    assert git(repo, "status", "--porcelain", "params.yaml").strip() == ""
    assert (repo / "mlflow.db").is_file()  # the store at the repository root, not in the temp copy

    # "Done when": the demo's model is the registry's champion, and `pneumonia predict` run in
    # the repository root finds it with no --model.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    pred = subprocess.run(
        [sys.executable, "-m", "pneumonia", "predict", "data/sample/chest_xray/test",
         "--out", str(tmp_path / "predictions.csv")],
        cwd=repo, env=env, capture_output=True, text=True, check=False)
    assert pred.returncode == 0, pred.stderr[-3000:]
    assert "models:/pneumonia-densenet201@champion" in pred.stderr
    # Issue 19: a model trained on the bundled sample says so
    assert "WARNING: this model was trained on the bundled sample (284 images, 64 px" in pred.stderr
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("path,probability,label,threshold") and len(lines) == 101

    second = _demo(repo)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage" not in second.stdout + second.stderr
    assert (repo / "params.yaml").read_bytes() == params_before
