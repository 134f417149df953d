"""Small file helpers the stages share: JSON reports, content hashes, worker counts."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pneumonia.paths import DETAILS, HEADLINE


def write_json(obj: Any, path: Path) -> None:
    """Write a stage's JSON report/metric: indented, newline-terminated, parent folder created.
    One format everywhere, so DVC hashes the same bytes for the same content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def headline(doc: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of ``doc`` at the dotted ``keys``, nested as in ``doc``, in the keys' order;
    a key the record lacks is left out (e.g. train's `seconds` before training finished)."""
    out: dict[str, Any] = {}
    for key in keys:
        *parents, leaf = key.split(".")
        src: Any = doc
        for part in parents:
            src = src.get(part) if isinstance(src, dict) else None
        if not (isinstance(src, dict) and leaf in src):
            continue
        dst = out
        for part in parents:
            dst = dst.setdefault(part, {})
        dst[leaf] = src[leaf]
    return out


def write_metrics(doc: dict[str, Any], path: Path) -> Path:
    """A stage's metrics: the complete record to metrics/details/<name>, its headline
    (paths.HEADLINE) to ``path``, the file DVC shows. Returns the details file."""
    details = DETAILS / path.name
    write_json(doc, details)
    write_json(headline(doc, HEADLINE[path.name]), path)
    return details


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
