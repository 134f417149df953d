"""Entry points: `python -m stages.<stage>` (what dvc.yaml runs) and the `pneumonia` command.

User mistakes (`PipelineError`) are printed as one clear message and exit code 2, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

from pneumonia.stage_runner import run_stage

STAGES = ("ingest", "validate", "balance", "split", "train", "evaluate")

log = logging.getLogger(__name__)


# `pneumonia <command>`: the six stages (run by hand as DVC runs them), the demo and helpers.
# command -> (module in pneumonia/commands/, one-line description). For `model-card` the module
# provides `model_card_command(args) -> int` (the exit code) and optionally
# `add_model_card_arguments(parser)`. Command modules are imported to build --help, so they
# import heavy libraries (TensorFlow, MLflow: seconds each) inside functions, never at module
# level.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pneumonia.commands.pipeline", "all six stages on the bundled sample, as a DVC experiment"),
    "params": ("pneumonia.commands.pipeline", "print params.yaml as validated (every key, with defaults)"),
    "params-doc": ("pneumonia.commands.pipeline",
                   ("regenerate docs/params.md's reference from pneumonia/params.py (--check: only "
                   "compare)")),
    "ablation": ("pneumonia.commands.experiments",
                 "queue and run the ablation grid (params.yaml `ablation:`), then report"),
    "recipe": ("pneumonia.commands.experiments",
               "the CPU recipe search: candidates x seeds as DVC experiments, metrics/recipe.md"),
    "preset": ("pneumonia.commands.experiments",
               "a preset's params overrides as -S flags: dvc exp run $(pneumonia preset cpu)"),
    "further-work": ("pneumonia.commands.experiments",
                     ("the paper's further work over seeds: PNEUMONIA recall by cause "
                     "(metrics/causes.md), three-class runs (metrics/three-class.md)")),
    "report": ("pneumonia.commands.experiments",
               "aggregate the finished ablation experiments into metrics/ablation.md"),
    "compare": ("pneumonia.commands.experiments",
                ("paired comparison of two revisions' test predictions: deltas with intervals, "
                "McNemar, DeLong, better / worse / within noise")),
    "predict": ("pneumonia.commands.inference",
                "P(PNEUMONIA) for image files, folders, .zip archives (PNG, JPEG, DICOM)"),
    "explain": ("pneumonia.commands.inference",
                "Grad-CAM heatmap overlays: where in the image the model looked"),
    "ensemble": ("pneumonia.commands.inference",
                 ("average several models (e.g. one recipe's seeds) into one .keras model that "
                 "predict, explain, site calibrate / adapt / check take as any model")),
    "model-card": ("pneumonia.commands.evaluation",
                   ("regenerate MODEL_CARD.md's numbers from metrics/ and dvc.lock (--check: "
                   "only compare)")),
    "promote": ("pneumonia.commands.promote",
                ("move the registry's `champion` to a version by hand (shows what the gate "
                "would say; records who, why, when)")),
    "site": ("pneumonia.commands.site",
             ("a new hospital: calibrate on its labelled images (site calibrate), measure it "
             "(site study); docs/new-site.md")),
    "robustness": ("pneumonia.commands.evaluation",
                   ("the model on shifted test images (resolution, gamma, noise, JPEG, rotation, "
                   "inversion): paired differences from the clean test set, with intervals")),
}

# Tools with their own command line, reachable as `pneumonia [team] <verb> ARGS...`: ARGS go to
# the tool unchanged (its --help included), so `python -m <module>` and `pneumonia <verb>` are the
# same program. verb -> (`module` whose main(argv) runs it, or `module:function`, argv prefix,
# one-line description).
TOOLS: dict[str, tuple[str, list[str], str]] = {
    "bench": ("benchmarks.run", [],
              ("performance benchmarks, one process per case; writes benchmarks/results.json "
              "(= make bench; needs a checkout of the repository)")),
}
TEAM_TOOLS: dict[str, tuple[str, list[str], str]] = {
    "up": ("pneumonia.commands.team:up", ["up"],
           ("start a local S3 API, PostgreSQL and an MLflow tracking server on 127.0.0.1 until "
           "Ctrl-C (= make mlflow-server)")),
    "push": ("pneumonia.team.remote", ["push"],
             ("dvc push; on failure one line naming the remote, the problem and the fix "
             "(= make push)")),
    "pull": ("pneumonia.team.remote", ["pull"],
             ("dvc pull; on failure one line naming the remote, the problem and the fix "
             "(= make pull)")),
    "multiworker": ("pneumonia.commands.team:multiworker", [],
                    ("check a MultiWorkerMirroredStrategy cluster (TF_CONFIG): a few synchronised "
                    "SGD steps")),
}


def py_name(command: str) -> str:
    """`model-card` -> `model_card`: the prefix of the command's functions in its module."""
    return command.replace("-", "_")


def stage_summary(stage: str) -> str:
    """The first line of `stages/<stage>.py`'s docstring, read without importing the stage (its
    imports take seconds): one description for dvc.yaml's entry point and `--help`."""
    spec = importlib.util.find_spec(f"stages.{stage}")
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else f"run the `{stage}` stage"
    return first.split(": ", 1)[1] if first.startswith("DVC stage") else first


def run_tool(target: str, argv: list[str], prog: str) -> None:
    """Run a tool's `main(argv)` (or `module:function`'s function) and exit with its status."""
    module, _, function = target.partition(":")
    if module.startswith("benchmarks.") and importlib.util.find_spec("benchmarks") is None:
        # benchmarks/ is not an installed package: it runs from a checkout (editable install).
        root = Path(__file__).resolve().parents[1]
        if not (root / "benchmarks" / "run.py").is_file():
            print(f"ERROR [{prog}]: benchmarks/ is not installed with the package; run it from a "
                  "checkout of the repository (`make bench`).", file=sys.stderr)
            sys.exit(2)
        sys.path.insert(0, str(root))
    sys.argv = [prog, *argv]  # the tool's own argparse names itself `pneumonia <verb>`
    # The tools start `dvc` / `mlflow`: this interpreter's (the venv's) first, as the Makefile does.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent),
                                          os.environ.get("PATH", "")])
    code = getattr(importlib.import_module(module), function or "main")(argv)
    sys.exit(code or 0)


def main(argv: list[str] | None = None) -> None:
    """`pneumonia <stage>` runs one stage (as DVC does); other commands are listed by --help."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TOOLS:
        module, prefix, _ = TOOLS[argv[0]]
        run_tool(module, prefix + argv[1:], f"pneumonia {argv[0]}")
    if len(argv) > 1 and argv[0] == "team" and argv[1] in TEAM_TOOLS:
        module, prefix, _ = TEAM_TOOLS[argv[1]]
        run_tool(module, prefix + argv[2:], f"pneumonia team {argv[1]}")
    parser = argparse.ArgumentParser(
        prog="pneumonia",
        description="Pneumonia detection on pediatric chest X-rays. The pipeline is normally "
        "driven by `dvc repro`; these commands run one step by hand, or use its results.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        text = stage_summary(stage)
        sub.add_parser(stage, help=text, description=f"{text} The `{stage}` stage of dvc.yaml, "
                       "run by hand in the current directory (without DVC's caching).")
    for name, (module, text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=text, description=text)
        add = getattr(importlib.import_module(module), f"add_{py_name(name)}_arguments", None)
        if add:
            add(cmd)
    for name, (_, _, text) in TOOLS.items():  # dispatched above; listed here for --help
        sub.add_parser(name, help=text, description=text, add_help=False)
    team = sub.add_parser("team", help="working as a team: local servers, DVC remote, "
                          "multi-worker check (docs/team.md)", description="Working as a team.")
    team_sub = team.add_subparsers(dest="team_command", required=True, metavar="COMMAND")
    for name, (_, _, text) in TEAM_TOOLS.items():
        team_sub.add_parser(name, help=text, description=text, add_help=False)
    args = parser.parse_args(argv)
    if args.command in STAGES:
        importlib.import_module(f"stages.{args.command}").main()
        return
    command = getattr(importlib.import_module(COMMANDS[args.command][0]),
                      f"{py_name(args.command)}_command")
    code: list[int] = []
    run_stage(lambda: code.append(command(args) or 0), args.command)
    sys.exit(code[0] if code else 0)


if __name__ == "__main__":
    main()
