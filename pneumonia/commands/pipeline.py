"""`pneumonia demo`, `pneumonia params` and `pneumonia params-doc`: the runs on pneumonia/demo.py,
params.py and params_doc.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

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
    doc = params_doc.DOC
    new = params_doc.update(doc, params_doc.reference())
    if new == doc.read_text(encoding="utf-8"):
        print(f"{doc} is up to date with pneumonia/params.py")
        return 0
    if args.check:
        print(f"{doc} is stale: its reference differs from pneumonia/params.py. Run "
              "`pneumonia params-doc` and commit the result.", file=sys.stderr)
        return 1
    doc.write_text(new, encoding="utf-8")
    print(f"updated the parameter reference in {doc} from pneumonia/params.py")
    return 0
