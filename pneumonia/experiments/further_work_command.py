"""`pneumonia further-work [--import RUN_OUT...] [--three-class RUN...]`: the paper's further
work over seeds (pneumonia.experiments.further_work): metrics/causes.md/.json, and with
three-class runs metrics/three-class.md/.json; the quoted sentences in docs/further-work.md are
rewritten from them."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DEFAULT_THREE_CLASS = "metrics/runs/tc-*"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="imports", nargs="+", default=[], metavar="RUN_OUT",
                        help="finished three-class runs' output folders (RUN_OUT/metrics/...): "
                        "their evaluate record and predictions (never the model) are copied to "
                        "metrics/runs/<basename>/ first")
    parser.add_argument("--three-class", nargs="*", default=None, metavar="RUN",
                        help="committed three-class runs to summarise (default: every "
                        f"{DEFAULT_THREE_CLASS} folder)")


def command(args: argparse.Namespace) -> int:
    from pneumonia.experiments import further_work

    imported = further_work.import_runs([Path(p) for p in args.imports])
    runs = ([Path(p) for p in args.three_class] if args.three_class is not None else
            sorted(p for p in Path(".").glob(DEFAULT_THREE_CLASS) if p.is_dir()))
    line = "pneumonia further-work" + "".join(
        f" --import {' '.join(shlex.quote(p) for p in args.imports)}" if args.imports else "")
    written = further_work.write_all(line, runs)
    for name in imported:
        print(f"imported metrics/runs/{name}/", file=sys.stderr)
    print("wrote " + ", ".join(f"{p}.md/.json" for p in written) + f"; {further_work.DOC} "
          "quotes rewritten", file=sys.stderr)
    return 0
