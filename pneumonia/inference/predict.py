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

import argparse
import csv
import io
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.errors import PipelineError
from pneumonia.files import spreadsheet_safe
from pneumonia.files import workers as resolve_workers
from pneumonia.inference.loading import load
from pneumonia.inference.sources import Item, expand, params_max_megapixels, to_input
from pneumonia.model.tasks import pneumonia_probability
from pneumonia.paths import CLASSES, LABELS
from pneumonia.stats.conformal import binary_probs, prediction_sets, set_names

log = logging.getLogger(__name__)

EPILOG = (
    "Exit status: 0 = every image predicted; 1 = some files could not be read or decoded (each "
    "is listed on stderr with its reason, and in the output with an `error`; the others are "
    "still predicted); 2 = usage error (no such path, empty folder, unknown model or alias).")
FIELDS = ("path", "probability", "label", "threshold", "error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files (PNG, JPEG, DICOM .dcm), folders (searched "
                        "recursively) or .zip archives")
    parser.add_argument("--model", metavar="M", default=None,
                        help="a .keras file, runs:/<run_id>/model or models:/NAME@ALIAS "
                        "(default: the registry's `champion` if the MLflow store has one, "
                        "else models/model.keras)")
    parser.add_argument("--site", metavar="NAME", default=None,
                        help="use the site's calibrated version (models:/<registry name>@site-"
                        "NAME, made by `pneumonia site calibrate`): its threshold and "
                        "prediction sets; every row names the calibration in `calibration`")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="write FILE.csv or FILE.json (default: CSV on stdout)")
    parser.add_argument("--threshold", metavar="T", type=threshold_arg, default=None,
                        help="P(PNEUMONIA) >= T is PNEUMONIA; `chosen`: the threshold evaluate "
                        "chose on the validation images (threshold_rule youden) for this model "
                        "(default: the threshold evaluate applied to this model, "
                        "evaluate.threshold)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=0,
                        help="decoding threads (0 = one per CPU core)")


def threshold_arg(text: str) -> float | str:
    """--threshold: a number, or `chosen` (the validation-chosen threshold)."""
    if text == "chosen":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor `chosen`") from None


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


def _rows(results: list[Result], threshold: float, three_class: bool = False,
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


def command(args: argparse.Namespace) -> int:
    if args.out is not None and Path(args.out).suffix.lower() not in (".csv", ".json"):
        raise PipelineError(f"--out {args.out}: give a .csv or .json file name")
    if isinstance(args.threshold, float) and not 0 < args.threshold < 1:
        raise PipelineError(f"--threshold {args.threshold}: must be strictly between 0 and 1")
    if args.batch_size < 1:
        raise PipelineError("--batch-size must be at least 1")
    if getattr(args, "site", None) is not None:
        from pneumonia.inference.loading import site_uri

        if args.model is not None:
            raise PipelineError("give --site or --model, not both (--site NAME is "
                                "models:/<registry name>@site-NAME)")
        args.model = site_uri(args.site)
    items = expand(args.paths)  # usage errors before TensorFlow is even imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

    from tqdm import tqdm

    loaded = load(args.model, args.threshold)
    cap, cap_from = params_max_megapixels()
    print(f"model {loaded.source} ({loaded.size} px), threshold {loaded.threshold:g} "
          f"({loaded.threshold_from}); {len(items)} image(s), at most {cap:g} megapixels each "
          f"({cap_from})", file=sys.stderr)
    if loaded.warning:
        print(f"WARNING: {loaded.warning}", file=sys.stderr)
    if loaded.promotion:
        print(f"NOTE: this champion was {loaded.promotion}", file=sys.stderr)
    with tqdm(total=len(items), unit="img", file=sys.stderr,
              disable=True if len(items) <= args.batch_size else None) as bar:
        results = list(predict_items(loaded.model, items, loaded.size, args.batch_size,
                                     args.workers, bar, cap))
    three_class = int(loaded.model.output_shape[-1]) > 1
    rows = _rows(results, loaded.threshold, three_class, loaded.qhat, loaded.site)
    meta = {"model": loaded.source, "threshold": loaded.threshold,
            "threshold_from": loaded.threshold_from, "provenance": loaded.provenance,
            "warning": loaded.warning, "promoted_by_hand": loaded.promotion}
    if loaded.qhat is not None:
        meta["conformal"] = {"qhat": loaded.qhat, "from": loaded.qhat_from}
    if loaded.site:
        meta["site_calibration"] = loaded.site
    write_output(rows, args.out, meta)
    failed = [r for r in results if r.error]
    counts = {label: sum(1 for r in rows if r["label"] == label) for label in LABELS}
    print(f"{len(results) - len(failed)} predicted ("
          + ", ".join(f"{n} {label}" for label, n in counts.items()) + ")"
          + (f", written to {args.out}" if args.out else ""), file=sys.stderr)
    if failed:
        print(f"{len(failed)} file(s) skipped:", file=sys.stderr)
        for r in failed:
            print(f"  {r.path}: {r.error}", file=sys.stderr)
        return 1
    return 0
