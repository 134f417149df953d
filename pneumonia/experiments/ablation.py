"""`pneumonia ablation`: the paper's open question — the backbone or the balancing? — as a grid of
queued DVC experiments, one per arm (backbone x balancing method x BatchNorm handling) and seed.

The grid lives in params.yaml (`ablation:`); a preset adds the overrides that make a whole grid
affordable (`cpu`: 2 CPU cores, no downloads) or keeps params.yaml as it is (`paper`). Each run is
`dvc exp run --queue -n abl-<arm>-s<seed> -S ...`; the queue runs one at a time by default (DVC's
queue has open races with several workers). `pneumonia report` then reads the finished
experiments (see `pneumonia.experiments.report`).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pneumonia.errors import PipelineError
from pneumonia.params import AblationParams, load_params

PREFIX = "abl"

# Overrides per preset, on top of params.yaml. `cpu`: from scratch (no ImageNet download), 64 px,
# all layers trained at a from-scratch learning rate, a few epochs: the whole default grid
# (3 balancing methods x 3 seeds) in about 90 min on 2 cores. It answers the question at CPU
# scale, without pretraining: not the paper's setting (docs/experiments.md).
PRESETS: dict[str, dict[str, str]] = {
    "cpu": {
        "data.image_size": "64",
        "model.weights": "none",
        "model.trainable_layers": "1000",
        "model.bn_momentum": "0.9",  # moving statistics that settle in a few epochs (demo.py)
        "model.dense_units": "64",
        "model.dropout": "0.3",
        "lr": "1e-3",
        "train.epochs": "3",
        "train.batch_size": "32",
        "train.early_stopping_patience": "5",
    },
    "paper": {},
}


@dataclass(frozen=True)
class Run:
    """One experiment of the grid."""

    backbone: str
    balance_method: str
    freeze_batchnorm: bool
    seed: int

    @property
    def arm(self) -> str:
        """Same spelling as `pneumonia.params.arm_of` (the MLflow `arm` tag)."""
        bn = "bn-frozen" if self.freeze_batchnorm else "bn-trained"
        return f"{self.backbone}/{self.balance_method}/{bn}"

    @property
    def name(self) -> str:
        """DVC experiment name (a valid git ref component)."""
        return f"{PREFIX}-{self.arm.replace('/', '-')}-s{self.seed}"

    def overrides(self, preset: str) -> dict[str, str]:
        return {
            **PRESETS[preset],
            "model.backbone": self.backbone,
            "balance.method": self.balance_method,
            "model.freeze_batchnorm": str(self.freeze_batchnorm).lower(),
            "train.seed": str(self.seed),
        }


def grid(p: AblationParams) -> list[Run]:
    """Every arm x seed of the params' grid, in a stable order."""
    return [
        Run(backbone, method, bn, seed)
        for backbone, method, bn, seed in itertools.product(
            p.backbones, p.balance_methods, p.freeze_batchnorm, p.seeds
        )
    ]


def _dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], env=env, capture_output=True,
                          text=True, check=False)
    if check and proc.returncode != 0:
        raise PipelineError(
            f"`dvc {' '.join(args)}` failed (exit {proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr).strip()[-2000:]}"
        )
    return proc


def queue_status() -> dict[str, int]:
    """Counts of `dvc queue status` rows by state (Queued, Running, Success, Failed)."""
    out = _dvc("queue", "status").stdout
    counts: dict[str, int] = {}
    for line in out.splitlines()[1:]:
        for state in ("Queued", "Running", "Success", "Failed"):
            if f" {state} " in f" {line} ":
                counts[state] = counts.get(state, 0) + 1
    return counts


def wait_for_queue(timeout_s: float, poll_s: float = 15.0) -> dict[str, int]:
    """Block until nothing is queued or running; PipelineError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = queue_status()
        if not counts.get("Queued") and not counts.get("Running"):
            return counts
        if time.monotonic() > deadline:
            raise PipelineError(
                f"the ablation queue is still busy after {timeout_s / 60:.0f} min ({counts}). "
                "It keeps running in the background: `dvc queue status`, `dvc queue logs NAME`; "
                "then `pneumonia report`."
            )
        time.sleep(poll_s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="overrides on top of params.yaml (default: ablation.preset)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="queue workers (default 1: DVC's queue has open races with several)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the experiments and their overrides, queue nothing")
    parser.add_argument("--no-wait", action="store_true",
                        help="queue and start the runs, return at once (report later)")
    parser.add_argument("--timeout-min", type=float, default=600.0,
                        help="give up waiting after this many minutes (default 600)")


def dataset_override(raw: str) -> dict[str, str]:
    """`-S data.raw=<absolute path>` when the dataset sits inside the repository but is not in git.

    DVC runs queued experiments in a temporary copy of the git-tracked files, so a dataset in
    `data/raw/` (ignored by git, where the README puts it) is missing there and every run fails in
    ingest with "No such file or directory". An absolute path reaches it from the copy; a tracked
    folder (the bundled sample) and an absolute path need nothing.
    """
    path = Path(raw)
    if path.is_absolute():
        return {}
    if not path.exists():
        raise PipelineError(
            f"data.raw: {raw} does not exist. The ablation trains on the dataset params.yaml names: "
            "put it there (docs/data.md, 'Getting the full dataset') or set data.raw in params.yaml."
        )
    tracked = subprocess.run(["git", "ls-files", "--", raw], capture_output=True, text=True,
                             check=False).stdout.strip()
    return {} if tracked else {"data.raw": str(path.resolve())}


def first_failure() -> str:
    """The last lines of the first failed queued experiment's log (why it failed)."""
    for line in _dvc("queue", "status", check=False).stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2 and " Failed" in f" {line} ":
            logs = _dvc("queue", "logs", fields[1], check=False)
            tail = [ln for ln in (logs.stdout + logs.stderr).splitlines() if ln.strip()][-8:]
            return f"{fields[1]}:\n" + "\n".join(tail)
    return ""


def command(args: argparse.Namespace) -> int:
    """Queue the grid, run it, wait, and write the report."""
    p = load_params().ablation
    preset = args.preset or p.preset
    runs = grid(p)
    data = dataset_override(load_params().data.raw)
    if args.jobs < 1:
        raise PipelineError("--jobs must be at least 1.")
    for run in runs:
        flags = " ".join(f"-S {k}={v}" for k, v in (run.overrides(preset) | data).items())
        print(f"{run.name}: dvc exp run --queue -n {run.name} {flags}")
    if args.dry_run:
        return 0
    if not Path("dvc.yaml").is_file():
        raise PipelineError("run `pneumonia ablation` from the repository root (where dvc.yaml is).")
    for run in runs:
        cmd = ["exp", "run", "--queue", "-n", run.name]
        for key, value in (run.overrides(preset) | data).items():
            cmd += ["-S", f"{key}={value}"]
        _dvc(*cmd)
    _dvc("queue", "start", "-j", str(args.jobs))
    print(f"queued {len(runs)} experiments, {args.jobs} worker(s): `dvc queue status` to follow")
    if args.no_wait:
        return 0
    counts = wait_for_queue(args.timeout_min * 60)
    print(f"queue finished: {counts}")
    if counts.get("Failed") and not counts.get("Success"):
        raise PipelineError(
            f"all {counts['Failed']} queued experiments failed; the first one's log ends:\n"
            f"{first_failure()}\n`dvc queue logs NAME` shows each; fix, then "
            "`dvc queue remove --failed` and run `pneumonia ablation` again."
        )
    from pneumonia.experiments import report

    report.write_report(prefix=PREFIX)
    return 1 if counts.get("Failed") else 0
