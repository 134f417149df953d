"""Entry points: `python -m stages.<stage>` (what dvc.yaml runs) and the `pneumonia` command.

User mistakes (`PipelineError`) are printed as one clear message and exit code 2, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pneumonia.stage import run_stage

STAGES = ("ingest", "validate", "balance", "split", "train", "evaluate")

log = logging.getLogger(__name__)


# `pneumonia <command>`: the six stages (run by hand as DVC runs them), the demo and helpers. A
# command module provides `command(args) -> int` (the exit code) and optionally
# `add_arguments(parser)`. Command modules are imported to build --help, so they import heavy
# libraries (TensorFlow, MLflow: seconds each) inside functions, never at module level.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pneumonia.demo", "all six stages on the bundled sample, as a DVC experiment"),
    "params": ("pneumonia.params", "print params.yaml as validated (every key, with defaults)"),
    "ablation": ("pneumonia.experiments.ablation",
                 "queue and run the ablation grid (params.yaml `ablation:`), then report"),
    "recipe": ("pneumonia.experiments.recipe",
               "the CPU recipe search: candidates x seeds as DVC experiments, metrics/recipe.md"),
    "preset": ("pneumonia.experiments.presets",
               "a preset's params overrides as -S flags: dvc exp run $(pneumonia preset cpu)"),
    "report": ("pneumonia.experiments.report",
               "aggregate the finished ablation experiments into metrics/ablation.md"),
    "compare": ("pneumonia.experiments.compare",
                ("paired comparison of two revisions' test predictions: deltas with intervals, "
                "McNemar, DeLong, better / worse / within noise")),
    "predict": ("pneumonia.inference.predict",
                "P(PNEUMONIA) for image files, folders, .zip archives (PNG, JPEG, DICOM)"),
    "explain": ("pneumonia.inference.explain",
                "Grad-CAM heatmap overlays: where in the image the model looked"),
}


def main(argv: list[str] | None = None) -> None:
    """`pneumonia <stage>` runs one stage (as DVC does); other commands are listed by --help."""
    parser = argparse.ArgumentParser(
        prog="pneumonia",
        description="Pneumonia detection on pediatric chest X-rays. The pipeline is normally "
        "driven by `dvc repro`; these commands run one step by hand, or use its results.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        sub.add_parser(stage, help=f"run the `{stage}` stage in the current directory")
    for name, (module, text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=text, description=text)
        add = getattr(importlib.import_module(module), "add_arguments", None)
        if add:
            add(cmd)
    args = parser.parse_args(argv)
    if args.command in STAGES:
        importlib.import_module(f"stages.{args.command}").main()
        return
    module = importlib.import_module(COMMANDS[args.command][0])
    code: list[int] = []
    run_stage(lambda: code.append(module.command(args) or 0), args.command)
    sys.exit(code[0] if code else 0)


if __name__ == "__main__":
    main()
