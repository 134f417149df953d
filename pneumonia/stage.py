"""How every stage (and every `pneumonia` command) runs: logging set up, and a user's mistake
(`PipelineError`) printed as one clear message with exit code 2, never a traceback. Anything else
is a bug and keeps its traceback."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from pneumonia.errors import PipelineError


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
