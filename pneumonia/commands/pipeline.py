"""`pneumonia demo`, `pneumonia params` and `pneumonia params-doc`: the runs on pneumonia/demo.py,
params.py and params_doc.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from pneumonia import demo, params, params_doc


def demo_command(args: object) -> int:
    """`pneumonia demo` (what `make demo` runs)."""
    demo.run()
    return 0


def params_command(args: object) -> int:
    """`pneumonia params`: print params.yaml as validated, defaults filled in."""
    print(json.dumps(dataclasses.asdict(params.load_params()), indent=2))
    return 0


def add_params_doc_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help=f"only compare; exit 1 when {params_doc.DOC} is stale")


def params_doc_command(args: argparse.Namespace) -> int:
    """`pneumonia params-doc [--check]` in the repository root."""
    return rewrite_generated(params_doc.DOC, params_doc.update(params_doc.DOC,
                                                               params_doc.reference()),
                             args.check, "reference", "differs", "pneumonia/params.py",
                             "pneumonia params-doc")


def rewrite_generated(path: Path, new: str, check: bool, what: str, differ: str, source: str,
                      command: str) -> int:
    """Write `new` (the file with its generated block regenerated from `source`) to `path`, or with
    `check` only compare: exit status 1 when the file is stale."""
    if new == path.read_text(encoding="utf-8"):
        print(f"{path} is up to date with {source}")
        return 0
    if check:
        print(f"{path} is stale: its {what} {differ} from {source}. Run `{command}` and commit "
              "the result.", file=sys.stderr)
        return 1
    path.write_text(new, encoding="utf-8")
    print(f"updated the {what} in {path} from {source}")
    return 0
