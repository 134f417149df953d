"""Small file helpers the stages share: JSON reports, content hashes, worker counts."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def write_json(obj: Any, path: Path) -> None:
    """Write a stage's JSON report/metric: indented, newline-terminated, parent folder created.
    One format everywhere, so DVC hashes the same bytes for the same content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def workers(n: int) -> int:
    """Resolve a `workers` param: 0 means one worker per available CPU core."""
    if n > 0:
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (dataset digests, resume keys)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
