"""How every stage (and every `pneumonia` command) runs: logging set up, and a user's mistake
(`PipelineError`) printed as one clear message with exit code 2, never a traceback. A failing
MLflow tracking store (server down or not MLflow, corrupt database) is such a message too.
Anything else is a bug and keeps its traceback. Credentials in URLs are masked in all of it."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable

from pneumonia.errors import PipelineError, mask_credentials

_record_factory = logging.getLogRecordFactory()


def _masked_record(*args: object, **kwargs: object) -> logging.LogRecord:
    """A log record whose message has URL credentials masked. A record factory, not a handler
    filter: MLflow's logger has its own handler and does not propagate to the root logger."""
    record = _record_factory(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: logging reports it when emitting
        return record
    masked = mask_credentials(message)
    if masked != message:
        record.msg, record.args = masked, ()
    return record


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("PNEUMONIA_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.setLogRecordFactory(_masked_record)


def tracking_store_failure(exc: BaseException) -> str | None:
    """The message for an error of the MLflow tracking store (MLflow, its HTTP client, its
    database layer), else None.

    The exception classes are looked up in sys.modules, not imported: a stage that never
    imported MLflow cannot have failed in it, and must not depend on it (dvc.yaml deps)."""
    kinds: list[type[BaseException]] = []
    for module, name in (("mlflow.exceptions", "MlflowException"),
                         ("requests.exceptions", "RequestException"),
                         ("sqlalchemy.exc", "SQLAlchemyError")):
        found = getattr(sys.modules.get(module), name, None)
        if isinstance(found, type):
            kinds.append(found)
    if not kinds or not isinstance(exc, tuple(kinds)):
        return None
    mlflow = sys.modules.get("mlflow")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri and mlflow is not None:
        uri = mlflow.get_tracking_uri()
    detail = " ".join(str(exc).split())[:800]
    return mask_credentials(
        f"the MLflow tracking store {uri or '(default)'} failed: {type(exc).__name__}: "
        f"{detail}\nCheck MLFLOW_TRACKING_URI: a server must be running and be an MLflow "
        "tracking server (it answers 200 at /health); a sqlite store must be a readable MLflow "
        "database. Or unset MLFLOW_TRACKING_URI to use the store at the repository root. "
        "Then run the stage again."
    )


def run_stage(fn: Callable[[], object], name: str) -> None:
    """Run a stage's main function, turning a PipelineError into a clean exit 2."""
    setup_logging()
    try:
        fn()
    except PipelineError as exc:
        print(f"\nERROR [{name}]: {mask_credentials(str(exc))}", file=sys.stderr)
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
    except Exception as exc:  # noqa: BLE001 - classified below; a bug keeps its traceback
        message = tracking_store_failure(exc)
        if message is not None:
            print(f"\nERROR [{name}]: {message}", file=sys.stderr)
            sys.exit(2)
        # A bug: its traceback, with any credentials in it masked.
        print(mask_credentials(traceback.format_exc()), file=sys.stderr, end="")
        sys.exit(1)
