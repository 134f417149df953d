"""`pneumonia demo` and `pneumonia params`: the runs on pneumonia/demo.py and params.py."""

from __future__ import annotations

import dataclasses
import json

from pneumonia import demo, params


def demo_command(args: object) -> int:
    """`pneumonia demo` (what `make demo` runs)."""
    demo.run()
    return 0


def params_command(args: object) -> int:
    """`pneumonia params`: print params.yaml as validated, defaults filled in."""
    print(json.dumps(dataclasses.asdict(params.load_params()), indent=2))
    return 0
