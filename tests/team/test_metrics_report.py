"""The pull-request report (.github/scripts/metrics-diff.sh) leads with the answer: on two real
revisions of a small DVC project (two committed `dvc repro` runs, pushed to a local remote), the
report opens with `pneumonia compare`'s paired table, then the headline `dvc metrics diff`, the
params diff, and every other value folded in a <details> block. No servers: the S3 and
CI-secrets path is tests/team/test_metrics_diff.py (slow)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.team.conftest import ROOT, clean_env, dvc, git, run

SCRIPT = ROOT / ".github/scripts/metrics-diff.sh"

# The stage: a "model" whose quality follows params.yaml `lr`, writing what the evaluate stage
# writes, in the same layout: the headline, the complete record, Table III's cells, predictions.
MAKE_RUN = '''
import json, pathlib
import numpy as np, yaml
lr = yaml.safe_load(open("params.yaml"))["lr"]
quality = 0.1 if lr > 1e-3 else 0.8
rng = np.random.default_rng(1)
n = 300
y = (np.arange(n) % 8 >= 3).astype(int)
prob = np.clip(0.5 + (y - 0.5) * quality + rng.normal(0, 0.25, n), 0.001, 0.999)
m = pathlib.Path("metrics"); (m / "details").mkdir(parents=True, exist_ok=True)
acc = float(((prob >= 0.5) == y).mean())
full = {"accuracy": acc, "threshold": 0.5, "brier": float(((prob - y) ** 2).mean()),
        "leakfree_accuracy": acc - 0.01}
json.dump({k: full[k] for k in ("accuracy", "threshold")}, open(m / "evaluate.json", "w"))
json.dump(full, open(m / "details/evaluate.json", "w"))
json.dump({"cells": {"accuracy": {"diff": acc - 0.9, "verdict": "below"}}},
          open(m / "table3.json", "w"))
with open(m / "predictions.csv", "w") as f:
    f.write("image_id,patient_id,actual,probability\\n")
    for i in range(n):
        f.write(f"img{i:04d},p{i // 2:03d},{'PNEUMONIA' if y[i] else 'NORMAL'},{prob[i]:.6f}\\n")
with open(m / "train_history.csv", "w") as f:
    f.write("epoch,loss\\n1,%f\\n2,%f\\n" % (1 / quality, 0.5 / quality))
'''

DVC_YAML = '''
stages:
  evaluate:
    cmd: python make_run.py
    deps: [make_run.py]
    params: [lr]
    metrics:
      - metrics/evaluate.json:
          cache: false
    plots:
      - metrics/details/evaluate.json:
          cache: false
      - metrics/table3.json:
          cache: false
      - metrics/predictions.csv:
          cache: false
    outs:
      - metrics/train_history.csv
'''


def _commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(project, remote): revision `v1` (lr 0.01, a weak model) and HEAD (lr 0.0001, strong)."""
    root = tmp_path_factory.mktemp("report")
    repo, remote = root / "project", root / "remote"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    dvc(repo, "init", "-q")
    dvc(repo, "remote", "add", "-d", "storage", str(remote))
    (repo / "make_run.py").write_text(MAKE_RUN)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    for lr, tag in (("0.01", "v1"), ("0.0001", "v2")):
        (repo / "params.yaml").write_text(f"lr: {lr}\n")
        dvc(repo, "repro", "-q")
        dvc(repo, "push", "-q")
        _commit(repo, f"run with lr {lr}")
        git(repo, "tag", tag)
    return repo, remote


def test_report_leads_with_the_paired_comparison(two_runs: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    repo, remote = two_runs
    ci = tmp_path / "ci"
    run(["git", "clone", "-q", str(repo), str(ci)], tmp_path)
    env = clean_env(BASE="v1", DVC_REMOTE_URL=str(remote), PYTHON=sys.executable)
    run(["bash", str(SCRIPT)], ci, env)
    report = (ci / "report.md").read_text()
    sections = ["## Model changes vs `v1`", "## Paired comparison: ", "### Headline metrics",
                "### Params", "<details>", "</details>"]
    where = [report.find(s) for s in sections]
    assert -1 not in where and where == sorted(where), report
    head = report[:report.find("<details>")]
    # the paired verdict: the strong model is better, first thing in the report
    assert "| accuracy |" in head and "| better |" in head
    assert "| metrics/evaluate.json | accuracy" in head and "| params.yaml | lr" in head
    # details-only keys appear only in the folded block
    assert "brier" not in head and "leakfree_accuracy" not in head
    folded = report[report.find("<details>"):]
    for text in ("metrics/details/evaluate.json", "brier", "leakfree_accuracy",
                 "metrics/table3.json", "cells.accuracy.diff"):
        assert text in folded, folded
    assert (ci / "metrics/train_history.csv").is_file()  # pulled from the remote
    assert "v1" in (ci / "dvc_plots/index.html").read_text()
