"""`make demo`: all six stages through DVC on the bundled sample, offline, in a few minutes.

It runs a DVC experiment in a temporary copy of the repository (`dvc exp run --temp`) with small
overrides, so params.yaml (the paper's configuration) is never modified. Every stage is cached by
DVC's run cache: running the demo again with nothing changed re-runs no stage. The results live in
the experiment (see `dvc exp show`) and in the MLflow store at the repository root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pneumonia.errors import PipelineError
from pneumonia.evaluation.paper import table3_markdown
from pneumonia.experiments.presets import CANDIDATES
from pneumonia.paths import TABLE3_JSON

# The recipe search's `cnn-ema` candidate (pneumonia.experiments.presets.CANDIDATES: the CPU
# recipe's levers on the search's small network, metrics/recipe.md), scaled down to the bundled
# sample, offline, on 2 CPU cores: `small_cnn` (a plain 0.86 M-parameter CNN; on the full data it
# ranked best, ROC AUC 0.976, at a quarter of DenseNet121's time) from random
# weights at 64 px, every layer trained at a from-scratch learning rate, BatchNorm momentum 0.9
# (with Keras' 0.99 the moving statistics still hold their initial values after the demo's few
# steps and the model predicts one class), a 64-unit head, a cosine schedule after one warm-up
# epoch with no early stop, and an exponential moving average of every weight, kept at the end.
# Not DenseNet121 (the recipe's backbone), for time: on a 2-vCPU Intel Xeon, TensorFlow spends
# ~1 min tracing DenseNet121's training step before the first one runs, and the demo took 5.3 min
# with it; the small CNN traces in seconds (docs/experiments.md). Scaled to the sample: 15 epochs
# of batch 16 (~210 steps), and EMA momentum 0.95 instead of 0.99 (the recipe has ~1160 steps;
# 0.95 keeps the average's window at the same ~10 % of the run); op determinism, so the same
# clone on the same machine gives the same numbers. The sample is far too small to learn much:
# the demo proves the pipeline, not the model. Measured: docs/experiments.md, tests/pipeline/
# test_demo.py.
DEMO_OVERRIDES: dict[str, str] = {
    "data.raw": "data/sample/chest_xray",
    **CANDIDATES["cnn-ema"],  # the CPU recipe's levers on small_cnn (12 epochs: 15 below)
    "validate.table1_counts": "false",  # the sample does not have Table I's counts
    "balance.target_normal": "130",  # ~ the sample's PNEUMONIA training count
    "train.epochs": "15",
    "train.batch_size": "16",
    "train.ema_momentum": "0.95",
    "train.deterministic": "true",
    # The demo model may take the registry's `champion` alias at any accuracy, so `pneumonia
    # predict` works next (and warns: the model carries its provenance, trained on the sample).
    # Only in a store without a champion or whose champion is a demo too: the gate never lets a
    # model trained on the bundled sample displace one trained on other data (pneumonia.gate).
    "evaluate.champion_min_accuracy": "0",
}


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _exp_refs() -> set[str]:
    out = _git("for-each-ref", "--format=%(refname)", "refs/exps")
    return {line for line in out.splitlines() if line and not line.startswith("refs/exps/exec")}


def run() -> None:
    """Run the demo experiment and print its results beside the paper's Table III."""
    if not Path("dvc.yaml").is_file():
        raise PipelineError("run the demo from the repository root (where dvc.yaml is).")
    try:
        _git("rev-parse", "--verify", "HEAD")
    except (subprocess.CalledProcessError, FileNotFoundError):
        raise PipelineError(
            "the demo runs a DVC experiment, which needs a git repository with at least one "
            "commit: run it in a `git clone` of the project."
        ) from None

    before = _exp_refs()
    env = dict(os.environ)
    # Stages run `python -m stages.<name>`: make this interpreter's environment the one on PATH.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "--temp"]
    for key, value in DEMO_OVERRIDES.items():
        cmd += ["-S", f"{key}={value}"]
    print("$ dvc exp run --temp " + " ".join(f"-S {k}={v}" for k, v in DEMO_OVERRIDES.items()))
    result = subprocess.run(cmd, env=env, check=False)
    if result.returncode != 0:
        raise PipelineError(
            f"the demo experiment failed (exit {result.returncode}); the stage's message is above."
        )

    new = sorted(_exp_refs() - before)
    if not new:
        raise PipelineError("DVC reported success but recorded no experiment; see its output above.")
    ref = new[-1]
    name = ref.rsplit("/", 1)[-1]
    # table3.json is a metric, kept in git (cache: false), so the experiment's commit holds it.
    table = table3_markdown(json.loads(_git("show", f"{ref}:{TABLE3_JSON.as_posix()}")))
    print(f"\nDemo experiment `{name}` on the bundled sample ({DEMO_OVERRIDES['data.image_size']} px, "
          f"{DEMO_OVERRIDES['model.backbone']} from random weights, "
          f"{DEMO_OVERRIDES['train.epochs']} epochs):\n")
    print(table)
    print(
        "\nThe sample is tiny and the model starts from random weights: these numbers show the\n"
        "pipeline works, not what the method achieves (see docs/reproducing.md).\n"
        "Every number carries its 95 % interval; on the sample's 100 test images they are wide\n"
        "(docs/statistics.md).\n\n"
        "Next:\n"
        "  dvc exp show                  # this experiment beside the others (params, metrics)\n"
        f"  dvc exp apply {name:<15} # bring its outputs into the workspace\n"
        "  make mlflow-ui                # runs beside the paper's Table III, http://127.0.0.1:5001\n"
    )


