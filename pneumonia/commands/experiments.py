"""`pneumonia ablation`, `recipe`, `preset`, `report`, `compare`, `further-work`: their options,
and each run on the library in pneumonia/experiments/."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from pneumonia.errors import PipelineError
from pneumonia.experiments import (
    ablation,
    compare,
    further_work,
    presets,
    recipe,
    report,
    revisions,
)
from pneumonia.experiments.grid import run_grid
from pneumonia.experiments.presets import PRESETS
from pneumonia.experiments.report import committed_header
from pneumonia.params import EvaluateParams, load_params


def add_ablation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="overrides on top of params.yaml (default: ablation.preset)")
    add_queue_arguments(parser)


def ablation_command(args: argparse.Namespace) -> int:
    """Queue the grid, run it, wait, and write the report."""
    p = load_params().ablation
    preset_name = args.preset or p.preset
    runs = [(run.name, run.overrides(preset_name)) for run in ablation.grid(p)]
    counts = run_grid(runs, "ablation", "pneumonia report", **grid_options(args))
    if counts is None:
        return 0
    report.write_report(prefix=ablation.PREFIX)
    return 1 if counts.get("Failed") else 0


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", nargs="?", default="main",
                        help="git revision or DVC experiment to compare against (default: main)")
    parser.add_argument("head", nargs="?", default=revisions.WORKSPACE,
                        help="git revision, DVC experiment or `workspace` (the default)")
    parser.add_argument("--out", type=Path, help="also write the markdown to this file")
    parser.add_argument("--resamples", type=int, default=compare.N_RESAMPLES,
                        help=f"bootstrap resamples (default {compare.N_RESAMPLES}, at least 200)")
    seed = EvaluateParams().seed  # the evaluate stage's bootstrap seed: the same intervals
    parser.add_argument("--seed", type=int, default=seed,
                        help=f"bootstrap seed (default {seed}, as evaluate.seed)")


def compare_command(args: argparse.Namespace) -> int:
    """`pneumonia compare`: print (and with --out write) the paired comparison."""
    text = compare.markdown(compare.compare_revisions(args.base, args.head, args.resamples, args.seed))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


def grid_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of `add_queue_arguments` as `run_grid`'s keyword arguments."""
    return {"jobs": args.jobs, "dry_run": args.dry_run, "no_wait": args.no_wait,
            "timeout_min": args.timeout_min}


def add_queue_arguments(parser: argparse.ArgumentParser) -> None:
    """--jobs, --dry-run, --no-wait, --timeout-min: the options every grid command takes."""
    parser.add_argument("--jobs", type=int, default=1,
                        help="queue workers (default 1: DVC's queue has open races with several)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the experiments and their overrides, queue nothing")
    parser.add_argument("--no-wait", action="store_true",
                        help="queue and start the runs, return at once (report later)")
    parser.add_argument("--timeout-min", type=float, default=1200.0,
                        help="give up waiting after this many minutes (default 1200)")


def add_preset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default="cpu",
                        help="preset (paper, cpu) or recipe candidate (default cpu)")


def preset_command(args: argparse.Namespace) -> int:
    """`pneumonia preset NAME`: the preset's overrides as `-S key=value` flags, one line."""
    print(" ".join(f"-S {k}={v}" for k, v in presets.preset(args.name).items()))
    return 0


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    add_queue_arguments(parser)
    parser.add_argument("--report-only", action="store_true",
                        help="queue nothing: (re)write the report from the finished rcp-* runs")
    parser.add_argument(
        "--from-runs", nargs="*", metavar="[NAME=]FOLDER", default=None,
        help=("queue nothing: add run folders (copies of a finished run's metrics/ and models/, "
              "named rcp-<candidate>-s<seed> or given as NAME=FOLDER) to the re-run's report, "
              f"{recipe.RERUN.md}, which chooses on validation; with no folder, rewrite that "
              "report from its committed runs"))
    parser.add_argument(
        "--candidates", nargs="+", default=None, metavar="NAME",
        help=("with --from-runs: the candidates the choice is among (default params.yaml "
              "recipe.candidates); the report names those it leaves out"))
    parser.add_argument(
        "--data", type=Path, default=None, metavar="DIR",
        help=("with --from-runs: the data folder (split.csv, images/) the runs were trained on; "
              "a run without metrics/predictions_val.csv gets its validation predictions from "
              "its models/model.keras on it"))
    add_report_file_arguments(parser, recipe.RECIPE_DIR)


def recipe_command(args: argparse.Namespace) -> int:
    """Queue candidates x seeds, run them, wait, and write metrics/recipe.md (or, with
    --from-runs, metrics/recipe-rerun.md from run folders)."""
    if getattr(args, "from_runs", None) is not None:
        recipe.from_runs(args.from_runs, args.data, args.header,
                         getattr(args, "candidates", None))
        return 0
    if args.from_committed:
        header = committed_header(recipe.RECIPE_JSON) if args.header is None else args.header
        recipe.write_report(header, recipe.load_committed())
        return 0
    if not args.report_only:
        counts = run_grid(recipe.grid(load_params().recipe), "recipe",
                          "pneumonia recipe --report-only", **grid_options(args))
        if counts is None:
            return 0
        if counts.get("Failed"):
            print("some runs failed: `dvc queue status`; the report covers the finished ones")
    recipe.write_report(args.header or "")
    return 0


def add_report_file_arguments(parser: argparse.ArgumentParser, predictions: Path) -> None:
    """--header and --from-committed, shared by `pneumonia report` and `pneumonia recipe`."""
    parser.add_argument("--header", default=None,
                        help="a line near the top: command, machine, date of the runs")
    parser.add_argument("--from-committed", action="store_true",
                        help=f"recompute the report from {predictions}/*.csv (no experiments "
                             "needed), keeping the committed header unless --header is given")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", default="abl", help="experiment name prefix (default abl)")
    add_report_file_arguments(parser, report.ABLATION_DIR)
    parser.add_argument("--extend", action="store_true",
                        help=f"add the finished experiments to the runs already in {report.ABLATION_DIR}/ "
                             "(more seeds for a committed grid) instead of replacing them")


def report_command(args: argparse.Namespace) -> int:
    if args.from_committed and args.extend:
        raise PipelineError("--from-committed and --extend exclude each other: --extend reads "
                            "the finished experiments too.")
    if args.from_committed:
        report.rewrite_committed(args.header)
    else:
        report.write_report(args.prefix, args.header or "", extend=args.extend)
    return 0


# `pneumonia further-work`: the three-class runs summarised when none are named
DEFAULT_THREE_CLASS = "metrics/runs/tc-*"


def add_further_work_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="imports", nargs="+", default=[], metavar="RUN_OUT",
                        help="finished three-class runs' output folders (RUN_OUT/metrics/...): "
                        "their evaluate record and predictions (never the model) are copied to "
                        "metrics/runs/<basename>/ first")
    parser.add_argument("--three-class", nargs="*", default=None, metavar="RUN",
                        help="committed three-class runs to summarise (default: every "
                        f"{DEFAULT_THREE_CLASS} folder)")


def further_work_command(args: argparse.Namespace) -> int:
    imported = further_work.import_runs([Path(p) for p in args.imports])
    runs = ([Path(p) for p in args.three_class] if args.three_class is not None else
            sorted(p for p in Path(".").glob(DEFAULT_THREE_CLASS) if p.is_dir()))
    line = "pneumonia further-work" + (f" --import {shlex.join(args.imports)}"
                                       if args.imports else "")
    written = further_work.write_all(line, runs)
    for name in imported:
        print(f"imported metrics/runs/{name}/", file=sys.stderr)
    print("wrote " + ", ".join(f"{p}.md/.json" for p in written) + f"; {further_work.DOC} "
          "quotes rewritten", file=sys.stderr)
    return 0
