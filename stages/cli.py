"""Entry points: `python -m stages.<stage>` (what dvc.yaml runs) and the `pneumonia` command.

User mistakes (`PipelineError`) are printed as one clear message and exit code 2, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable

from stages.config import PipelineError

STAGES = ("ingest", "validate", "balance", "split", "train", "evaluate")

log = logging.getLogger("stages")


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("PNEUMONIA_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )


def run_stage(fn: Callable[[], object], name: str) -> None:
    """Run a stage's main function, turning a PipelineError into a clean exit 2."""
    setup_logging()
    try:
        fn()
    except PipelineError as exc:
        print(f"\nERROR [{name}]: {exc}", file=sys.stderr)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        if exc.name not in ("tensorflow", "keras"):
            raise
        # TensorFlow comes from an extra (cpu or gpu, see pyproject.toml), not the base install.
        print(
            f"\nERROR [{name}]: {exc.name} is not installed in this environment. Install the "
            "project with `make install` (CPU), or `pip install -e '.[cpu]'`, or "
            "`pip install -e '.[gpu]'` on an NVIDIA GPU machine.",
            file=sys.stderr,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\n[{name}] interrupted", file=sys.stderr)
        sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """`pneumonia <stage>` runs one stage (as DVC does); `pneumonia demo` runs the demo."""
    parser = argparse.ArgumentParser(
        prog="pneumonia",
        description="Pneumonia detection pipeline. Normally driven by `dvc repro`; "
        "these commands run a single step by hand.",
    )
    parser.add_argument("command", choices=(*STAGES, "demo", "params"))
    args, rest = parser.parse_known_args(argv)
    if args.command == "params":
        from stages.config import load_params

        def show() -> None:
            import json
            from dataclasses import asdict

            print(json.dumps(asdict(load_params()), indent=2))

        run_stage(show, "params")
        return
    module = importlib.import_module(f"stages.{args.command}")
    sys.argv = [f"pneumonia {args.command}", *rest]
    module.main()


if __name__ == "__main__":
    main()
