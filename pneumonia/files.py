"""Small file helpers the stages share: JSON reports, checked CSV tables, content hashes, worker
counts."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia.errors import PipelineError


def write_json(obj: Any, path: Path) -> None:
    """Write a stage's JSON report/metric: indented, newline-terminated, parent folder created.
    One format everywhere, so DVC hashes the same bytes for the same content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def read_csv_checked(source: Path | str, where: str, columns: Iterable[str], *,
                     dtype: dict[str, Any], damaged: str, outdated: str) -> pd.DataFrame:
    """A CSV table (`source`: a file, or the CSV's text) with `columns` checked. PipelineError
    `<where> cannot be read as CSV (<why>): <damaged>` when pandas cannot parse it, and
    `<where> lacks column(s) <names>: <outdated>` when a column is missing; `damaged` and
    `outdated` say how to fix it."""
    try:
        frame = pd.read_csv(source if isinstance(source, Path) else io.StringIO(source),
                            dtype=dtype)
    except (ValueError, UnicodeDecodeError) as exc:  # pandas' ParserError/EmptyDataError too
        raise PipelineError(f"{where} cannot be read as CSV ({type(exc).__name__}: "
                            f"{str(exc).strip()}): {damaged}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PipelineError(f"{where} lacks column(s) {', '.join(missing)}: {outdated}")
    return frame


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
