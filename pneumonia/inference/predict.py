"""`pneumonia predict PATH...`: P(PNEUMONIA) for X-ray files, folders and .zip archives.

Columns: path, probability (P(PNEUMONIA)), label, threshold, error; a three-class model adds
p_normal, p_bacteria, p_virus and class (the most probable cause); a model with a conformal
calibration (evaluate) adds prediction_set and refer (pneumonia.inference.pyfunc, the same rule);
a site's version (`--site NAME`, pneumonia.site) adds probability_calibrated and calibration.

Images are read and decoded by a thread pool (Pillow releases the GIL while decoding and
resizing) a few batches ahead of the model, so decoding overlaps with the forward pass; results
keep the order of the inputs. A bad image is reported with its reason and skipped: the others are
still predicted.

Exit codes: 0 every image predicted; 1 some image could not be read or decoded (listed on
stderr and in the output with its `error`); 2 a usage error (no such path, an empty folder, an
unknown model or alias, a bad option).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.files import spreadsheet_safe
from pneumonia.files import workers as resolve_workers
from pneumonia.inference.sources import Item, to_input
from pneumonia.model.tasks import pneumonia_probability
from pneumonia.paths import CLASSES, LABELS
from pneumonia.stats.conformal import binary_probs, prediction_sets, set_names

log = logging.getLogger(__name__)

FIELDS = ("path", "probability", "label", "threshold", "error")


@dataclass
class Result:
    path: str
    probability: float | None = None
    error: str | None = None
    outputs: tuple[float, ...] | None = None  # a three-class model's (normal, bacteria, virus)


def _load(item: Item, size: int, max_megapixels: float | None) -> np.ndarray:
    return to_input(item.read(), size, max_megapixels)


def predict_items(model: Any, items: Sequence[Item], size: int, batch_size: int = 32,
                  workers: int = 0, progress: Any = None,
                  max_megapixels: float | None = None, tta: bool = False) -> Iterator[Result]:
    """Results in input order; decoding runs `workers` threads, up to 3 batches ahead. Images
    over `max_megapixels` (default: the params default) are refused from their header. `tta`:
    each output is the mean over pneumonia.inference.tta's fixed views (9 model passes)."""
    ahead = 3 * batch_size
    pending: deque[tuple[Item, Future]] = deque()
    batch: list[tuple[Item, np.ndarray]] = []
    queued = iter(items)

    width = int(model.output_shape[-1])

    def flush() -> Iterator[Result]:
        x = np.stack([a for _, a in batch])
        if tta:
            from pneumonia.inference import tta as views

            out = views.outputs(model, x).reshape(len(batch), width)
        else:
            out = np.asarray(model.predict_on_batch(x), dtype=np.float64).reshape(len(batch),
                                                                                   width)
        for (item, _), p, row in zip(batch, pneumonia_probability(out), out, strict=True):
            yield Result(item.name, float(p), outputs=tuple(map(float, row)) if width > 1
                         else None)
        if progress is not None:
            progress.update(len(batch))
        batch.clear()

    with ThreadPoolExecutor(max_workers=resolve_workers(workers)) as pool:
        def fill() -> None:
            while len(pending) < ahead:
                item = next(queued, None)
                if item is None:
                    return
                pending.append((item, pool.submit(_load, item, size, max_megapixels)))

        fill()
        while pending:
            item, future = pending.popleft()
            fill()  # keep the decoders busy while this thread waits or computes
            try:
                batch.append((item, future.result()))
            except ValueError as exc:
                if progress is not None:
                    progress.update(1)
                yield Result(item.name, error=str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad file never stops the others
                if progress is not None:
                    progress.update(1)
                yield Result(item.name, error=f"unexpected {type(exc).__name__}: {exc}")
            if len(batch) == batch_size:
                yield from flush()
        if batch:
            yield from flush()


def result_rows(results: list[Result], threshold: float, three_class: bool = False,
          qhat: float | tuple[float, float] | None = None,
          site: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Output rows; the columns of a three-class model and of a conformal set when given."""
    rows = []
    for r in results:
        ok = r.probability is not None
        row: dict[str, Any] = {
            "path": r.path,
            "probability": round(r.probability, 6) if ok else None,
            "label": LABELS[int(r.probability >= threshold)] if ok else None,
            "threshold": threshold,
        }
        if three_class:
            for i, c in enumerate(CLASSES):
                row[f"p_{c}"] = round(r.outputs[i], 6) if ok and r.outputs else None
            row["class"] = CLASSES[int(np.argmax(r.outputs))] if ok and r.outputs else None
        if qhat is not None:
            sets = prediction_sets(binary_probs([r.probability]), qhat) if ok else None
            row["prediction_set"] = set_names(sets, LABELS)[0] if ok else None
            row["refer"] = bool(sets.sum() != 1) if ok else None
        if site:  # pneumonia.site: the calibrated probability and the calibration's name
            from pneumonia.inference.pyfunc import tempered

            row["probability_calibrated"] = (round(float(tempered(r.probability,
                                                                  site.get("temperature"))), 6)
                                             if ok else None)
            row["calibration"] = site.get("calibration")
        row["error"] = r.error
        rows.append(row)
    return rows


def write_output(rows: list[dict[str, Any]], out: str | None, meta: dict[str, Any]) -> None:
    if out is not None and Path(out).suffix.lower() == ".json":
        doc = {**meta, "predictions": rows}
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        return
    buf = io.StringIO()
    fields = list(rows[0]) if rows else list(FIELDS)
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # File names are the user's: a cell a spreadsheet would run as a formula is quoted.
        writer.writerow({k: "" if v is None else spreadsheet_safe(v) for k, v in row.items()})
    if out is None:
        sys.stdout.write(buf.getvalue())
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(buf.getvalue(), encoding="utf-8")


