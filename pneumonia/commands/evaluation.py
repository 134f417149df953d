"""`pneumonia model-card` and `pneumonia robustness`: their options, and each run on the
library (pneumonia/evaluation/card.py, robustness.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from pneumonia.errors import PipelineError
from pneumonia.evaluation import card, robustness
from pneumonia.files import workers as resolve_workers
from pneumonia.inference.loading import load
from pneumonia.model.inputs import read_split, subset_rows
from pneumonia.paths import LABELS, SPLIT_CSV


def add_model_card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="only compare; exit 1 when MODEL_CARD.md is stale")


def model_card_command(args: argparse.Namespace) -> int:
    """`pneumonia model-card [--check]` in the repository root."""
    new = card.update(card.CARD, card.render())
    if new == card.CARD.read_text(encoding="utf-8"):
        print(f"{card.CARD} is up to date with metrics/ and dvc.lock")
        return 0
    if args.check:
        print(f"{card.CARD} is stale: its numbers differ from metrics/ and dvc.lock. Run "
              "`pneumonia model-card` and commit the result.", file=sys.stderr)
        return 1
    card.CARD.write_text(new, encoding="utf-8")
    print(f"updated the numbers in {card.CARD} from metrics/ and dvc.lock")
    return 0


def add_robustness_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Shifts: " + ", ".join(s.name for s in robustness.SHIFTS)
                     + ". Exit status: 0 = report written; 2 = usage error.")
    parser.add_argument("--model", metavar="M", default=None,
                        help="as for `pneumonia predict` (default: the champion, else "
                        "models/model.keras)")
    parser.add_argument("--threshold", metavar="T", type=float, default=None,
                        help="decision threshold (default: the one evaluate chose for the model)")
    parser.add_argument("--shifts", metavar="A,B", default=None,
                        help="only these shifts (comma-separated names; default: all)")
    parser.add_argument("--out", metavar="DIR", type=Path, default=robustness.OUT_DIR,
                        help=f"folder for the report (default {robustness.OUT_DIR})")
    parser.add_argument("--resamples", type=int, default=robustness.N_RESAMPLES,
                        help=f"bootstrap resamples (default {robustness.N_RESAMPLES}, at least 200)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap and noise seed")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=0,
                        help="threads that shift and decode images (0 = one per CPU core)")


def robustness_command(args: argparse.Namespace) -> int:
    """Score the model on the test subset of data/split.csv, clean and shifted."""
    shifts = robustness.select_shifts(args.shifts)
    if args.resamples < 200:
        raise PipelineError("--resamples must be at least 200 (2000 recommended).")
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise PipelineError(f"--threshold {args.threshold}: must be strictly between 0 and 1")
    if args.batch_size < 1:
        raise PipelineError("--batch-size must be at least 1")
    rows = subset_rows(read_split(), "test")
    missing = [p for p in rows["path"] if not Path(p).is_file()]
    if missing:
        raise PipelineError(f"{len(missing)} test image(s) listed in {SPLIT_CSV} are missing "
                            f"(e.g. {missing[0]}): run `dvc repro` (or `dvc pull`).")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    loaded = load(args.model, args.threshold)
    files = [Path(p).read_bytes() for p in rows["path"]]
    y = np.array([LABELS.index(lbl) for lbl in rows["label"]])
    groups = rows["patient_id"].astype(str).to_numpy()
    print(f"model {loaded.source}, threshold {loaded.threshold:g} ({loaded.threshold_from}); "
          f"{len(files)} test images x {len(shifts) + 1} conditions", file=sys.stderr)
    report = robustness.score_shifts(
        loaded.model, files, rows["image_id"].astype(str).tolist(), y, groups,
        loaded.threshold, shifts, args.resamples, args.seed, args.batch_size,
        resolve_workers(args.workers), lambda name: print(f"  {name} done", file=sys.stderr))
    report["model"] = loaded.source
    report["threshold_from"] = loaded.threshold_from
    report["cpu"] = robustness.cpu_description()
    paths = robustness.write_report(report, args.out)
    print(robustness.markdown(report))
    print("written: " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0
