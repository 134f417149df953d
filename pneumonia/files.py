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
from pneumonia.paths import DETAILS, HEADLINE


def write_json(obj: Any, path: Path) -> None:
    """Write a stage's JSON report/metric: indented, newline-terminated, parent folder created.
    One format everywhere, so DVC hashes the same bytes for the same content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_json_and_markdown(doc: Any, markdown: str, out: Path) -> tuple[Path, Path]:
    """A measurement's record and its report side by side: OUT.json (`doc`, indent 1) and OUT.md
    (`markdown`), parent folder created. Returns the two paths (.md first)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    return md_path, json_path


def with_generated_block(path: Path, block: str, begin: str, end: str, goes: str) -> str:
    """`path`'s text with the block between its `begin` and `end` markers replaced by `block`
    (which holds both markers). PipelineError when the markers are missing; `goes` says what
    goes there ("the numbers go")."""
    text = path.read_text(encoding="utf-8")
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise PipelineError(f"{path}: the markers of the generated block are missing; put "
                            f"'{begin}' and '{end}' where {goes}.")
    return text[:start] + block + text[stop + len(end):]


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


# A spreadsheet (Excel, LibreOffice, Google Sheets) runs a cell that starts with one of these as
# a formula (`=cmd|' /C calc'!A0`, `@SUM(...)`): "CSV injection" (OWASP). Every CSV the pipeline
# writes from text the user supplied (file names, patient ids from a metadata CSV) goes through
# `spreadsheet_safe`, which prefixes such a cell with a single quote, OWASP's advice. Idempotent
# (a cell already starting with `'` is left alone), and numbers are never touched, so a value
# read back from one of our CSVs and written again stays as it was.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """`value` as a CSV cell a spreadsheet shows as text: a str starting with = + - @ tab or
    CR gets a leading `'`; anything else is returned unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def spreadsheet_safe_frame(frame: Any) -> Any:
    """A copy of a pandas DataFrame with `spreadsheet_safe` applied to every text column."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(spreadsheet_safe)
    return out
