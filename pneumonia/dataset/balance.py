"""Stage `balance`: generate NORMAL training images with Augmentor until NORMAL reaches the target.

Only training images are used as sources (the test set is never touched). Generated image i
(0..n-1) comes from source ``sources[i % len(sources)]`` (sources sorted by image_id), as its
k-th variant (k = i // len(sources)), and is written to
data/balanced/NORMAL/{source_id}_aug{k:02d}.png. Augmentor's own `Pipeline.sample()` is
multi-threaded and names files with uuid4, so its output is not reproducible; instead each image is
transformed by Augmentor's operations directly, with Python's `random` and NumPy's global RNG seeded
from a SHA-256 of (balance.seed, source id, k): same bytes on rerun, serial or parallel.

Same bytes on every x86-64 CPU, too: Augmentor's `Skew` solves for its perspective coefficients
with `np.linalg.pinv` (an SVD in OpenBLAS, whose kernels are chosen per CPU at run time), and a
last-bit difference in a coefficient moves a few output pixels by one grey level. On an AMD EPYC,
forcing OpenBLAS's Haswell kernels (`OPENBLAS_CORETYPE=Haswell`) instead of the SkylakeX ones it
picks there changed 2 of 300 variants of the shared dataset's NORMAL images (2026-12-06). `_Skew`
draws exactly what Augmentor's `Skew` draws and solves the same 8 x 8 system exactly, in rational
arithmetic: coefficients correctly rounded, the same on every machine (docs/data.md,
"Byte-identical on every CPU").

`task: three_class`: every class smaller than the largest is grown to the largest one's count
(`class_targets`), each from its own class's images; generated bacterial / viral images are
written to data/balanced/PNEUMONIA/.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import random
import shutil
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pneumonia.dataset.images import encode_png
from pneumonia.errors import PipelineError
from pneumonia.files import workers, write_json
from pneumonia.params import BalanceParams, Params
from pneumonia.paths import (
    BALANCE_JSON,
    BALANCED_DIR,
    BALANCED_MANIFEST,
    CLASSES,
    MANIFEST,
    VALIDATION_JSON,
)

log = logging.getLogger(__name__)

BALANCED_COLUMNS = [
    "image_id", "path", "label", "class", "patient_id", "split", "source_image_id", "png_sha256",
]


def image_seed(seed: int, source_id: str, k: int) -> int:
    """A per-image seed stable across processes and Python versions (built-in hash() is not)."""
    digest = hashlib.sha256(f"{seed}:{source_id}:{k}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class _Probe:
    """Stands in for an image in Augmentor's `Skew.perform_operation`: records the perspective
    coefficients it would apply (`transform(size, PERSPECTIVE, coefficients, ...)`)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self.coefficients: tuple[float, ...] = ()

    def transform(self, size: tuple[int, int], method: object, data: object, **_: object) -> None:
        self.coefficients = tuple(float(c) for c in np.asarray(data).reshape(8))


def _solve_exact(rows: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """Solve a square linear system exactly (Gauss-Jordan on Fractions)."""
    n = len(rhs)
    m = [[*row, b] for row, b in zip(rows, rhs)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if m[r][col] != 0)
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col and m[r][col] != 0:
                f = m[r][col] / m[col][col]
                m[r] = [a - f * b for a, b in zip(m[r], m[col])]
    return [m[i][n] / m[i][i] for i in range(n)]


def skew_coefficients(new_plane: list[tuple[int, int]], original_plane: list[tuple[int, int]],
                      ) -> tuple[float, ...]:
    """The perspective coefficients mapping `new_plane` onto `original_plane` (the system
    Augmentor's `Skew` builds), solved exactly and rounded once: the same floats on any CPU."""
    rows, rhs = [], []
    for (u, v), (x, y) in zip(new_plane, original_plane):
        rows.append([Fraction(c) for c in (u, v, 1, 0, 0, 0, -x * u, -x * v)])
        rows.append([Fraction(c) for c in (0, 0, 0, u, v, 1, -y * u, -y * v)])
        rhs += [Fraction(x), Fraction(y)]
    return tuple(float(c) for c in _solve_exact(rows, rhs))


def _skew_plane(coefficients: tuple[float, ...], width: int, height: int,
                ) -> list[tuple[int, int]]:
    """The integer corners that Augmentor's `Skew` moved (its `new_plane`), recovered from the
    coefficients it solved for: the inverse perspective map of the image's corners, rounded
    (every corner is an integer; the float error is ~1e-12 px)."""
    a, b, c, d, e, f, g, h = coefficients
    inverse = np.linalg.inv(np.array([[a, b, c], [d, e, f], [g, h, 1.0]]))
    plane = []
    for x, y in [(0, 0), (width, 0), (width, height), (0, height)]:
        u, v, w = inverse @ np.array([x, y, 1.0])
        plane.append((round(u / w), round(v / w)))
    return plane


class _Skew:
    """Augmentor's `Skew(probability=1.0, skew_type="RANDOM", magnitude)`, exactly: the same
    random draws (Augmentor's own code makes them, on a `_Probe`) and the same PERSPECTIVE /
    BICUBIC transform, with coefficients from `skew_coefficients` instead of OpenBLAS."""

    def __init__(self, magnitude: float) -> None:
        from Augmentor.Operations import Skew

        self._skew = Skew(probability=1.0, skew_type="RANDOM", magnitude=magnitude)

    def perform_operation(self, images: list[Image.Image]) -> list[Image.Image]:
        width, height = images[0].size
        probe = _Probe((width, height))
        self._skew.perform_operation([probe])
        original = [(0, 0), (width, 0), (width, height), (0, height)]
        plane = _skew_plane(probe.coefficients, width, height)
        exact = skew_coefficients(plane, original)
        if not np.allclose(exact, probe.coefficients, rtol=1e-9, atol=1e-9):
            raise AssertionError(f"skew plane not recovered: {plane}")  # Augmentor changed
        return [im.transform(im.size, Image.Transform.PERSPECTIVE, exact,
                             resample=Image.Resampling.BICUBIC) for im in images]


def augment(img: Image.Image, p: BalanceParams, seed: int) -> Image.Image:
    """One subtle variant of `img`: skew, elastic distortion, rotation, zoom. Never a flip: a
    mirrored chest X-ray (heart on the right) is not a plausible patient.

    Same size and mode as the input; deterministic for a given seed.
    """
    from Augmentor.Operations import Distort, RotateRange, ZoomRandom

    random.seed(seed)
    np.random.seed(seed)
    ops = [_Skew(p.skew_magnitude)]
    if p.distortion_magnitude > 0:
        ops.append(Distort(probability=1.0, grid_width=p.distortion_grid,
                           grid_height=p.distortion_grid, magnitude=p.distortion_magnitude))
    if p.rotation > 0:
        # RotateRange crops the rotated image to its largest inner rectangle and scales it back.
        ops.append(RotateRange(probability=1.0, max_left_rotation=p.rotation,
                               max_right_rotation=p.rotation))
    # zoom_min..zoom_max is a magnification factor; ZoomRandom takes the kept side fraction and
    # crops it at a random position, then scales back to the original size.
    factor = random.uniform(p.zoom_min, p.zoom_max)
    if factor > 1.0:
        ops.append(ZoomRandom(probability=1.0, percentage_area=1.0 / factor, randomise=False))
    out = [img]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # Augmentor's np.matrix
        for op in ops:
            out = op.perform_operation(out)
    result = out[0]
    if result.mode != img.mode:
        result = result.convert(img.mode)
    if result.size != img.size:
        result = result.resize(img.size, Image.Resampling.BICUBIC)
    return result


def _generate(task: tuple[str, str, int, BalanceParams]) -> tuple[str, str]:
    """Write one generated image; return (its path, sha256 of its PNG bytes)."""
    source, out, seed, p = task
    with Image.open(source) as img:
        img.load()
        variant = augment(img.convert("L") if img.mode != "L" else img, p, seed)
    png = encode_png(variant)
    Path(out).write_bytes(png)
    return out, hashlib.sha256(png).hexdigest()


def plan(manifest: pd.DataFrame, target: int, cls: str = "normal") -> pd.DataFrame:
    """The generated images of class `cls` (normal; virus for `task: three_class`) until the
    class has `target` training images: one row per image (balanced.csv columns), sorted by
    image_id."""
    label = "NORMAL" if cls == "normal" else "PNEUMONIA"
    train = manifest[manifest.split == "train"]
    sources = train[train.label == "NORMAL"] if cls == "normal" else train[train["class"] == cls]
    sources = sources.sort_values("image_id", ignore_index=True)
    n = max(0, target - len(sources))
    if n and sources.empty:
        raise PipelineError(f"{MANIFEST} has no {cls} training images to augment from.")
    rows = []
    for i in range(n):
        src = sources.iloc[i % len(sources)]
        k = i // len(sources)
        image_id = f"{src.image_id}_aug{k:02d}"
        rows.append({
            "image_id": image_id, "path": (BALANCED_DIR / label / f"{image_id}.png").as_posix(),
            "label": label, "class": cls, "patient_id": src.patient_id, "split": "train",
            "source_image_id": src.image_id, "source_path": src.path, "k": k,
        })
    columns = [*BALANCED_COLUMNS[:-1], "source_path", "k"]
    return pd.DataFrame(rows, columns=columns).sort_values("image_id", ignore_index=True)


def class_targets(manifest: pd.DataFrame, params: Params) -> dict[str, int]:
    """Training images each class is grown to (classes not listed are left as they are).

    binary: NORMAL to `balance.target_normal` (the paper: 3849, about PNEUMONIA's 3883).
    three_class: every class smaller than the largest one is grown to the largest one's count
    (Kermany's training set: normal 1349 and virus 1345 -> bacteria's 2538); target_normal is
    not used. Only with `balance.method: augmentor`; class_weight and none generate nothing.
    """
    if params.balance.method != "augmentor":
        return {}
    if params.task != "three_class":
        return {"normal": params.balance.target_normal}
    train = manifest[manifest.split == "train"]
    counts = {c: int((train["class"] == c).sum()) for c in CLASSES}
    largest = max(counts.values())
    return {c: largest for c, n in counts.items() if n < largest}


def run(params: Params) -> dict[str, int]:
    """Run the balance stage in the current directory; return metrics/balance.json's content."""
    p = params.balance
    if not MANIFEST.is_file():
        raise PipelineError(f"{MANIFEST} not found: run the ingest stage first (dvc repro ingest).")
    if VALIDATION_JSON.is_file() and not json.loads(VALIDATION_JSON.read_text()).get("success"):
        raise PipelineError(f"{VALIDATION_JSON} says the data failed validation: fix the data "
                            "and re-run validate before balancing.")
    manifest = pd.read_csv(MANIFEST, dtype=str, keep_default_na=False)
    # class_weight and none train on the original images only (the loss weighting, if any,
    # happens in train): nothing is generated, balanced.csv is empty.
    targets = class_targets(manifest, params)
    target = targets.get("normal", 0)
    generated = plan(manifest, target)
    for cls, n in targets.items():
        if cls != "normal":
            generated = pd.concat([generated, plan(manifest, n, cls)], ignore_index=True)
    generated = generated.sort_values("image_id", ignore_index=True)
    missing = [s for s in sorted(set(generated.source_path)) if not Path(s).is_file()]
    if missing:
        raise PipelineError(f"{len(missing)} source image(s) listed in {MANIFEST} are missing, "
                            f"e.g. {missing[0]}: re-run the ingest stage.")

    shutil.rmtree(BALANCED_DIR, ignore_errors=True)  # exactly the current images, no stale ones
    (BALANCED_DIR / "NORMAL").mkdir(parents=True)
    if params.task == "three_class":
        (BALANCED_DIR / "PNEUMONIA").mkdir()
    tasks = [(r.source_path, r.path, image_seed(p.seed, r.source_image_id, r.k), p)
             for r in generated.itertuples()]
    n_workers = min(workers(p.workers), max(1, len(tasks)))
    bar = {"total": len(tasks), "desc": "balance", "unit": "img", "mininterval": 1.0}
    if n_workers == 1:
        written = dict(_generate(t) for t in tqdm(tasks, **bar))
    else:
        with multiprocessing.Pool(n_workers) as pool:
            written = dict(tqdm(pool.imap_unordered(_generate, tasks, chunksize=16), **bar))
    generated["png_sha256"] = generated["path"].map(written)

    BALANCED_MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    generated[BALANCED_COLUMNS].to_csv(BALANCED_MANIFEST, index=False, lineterminator="\n")
    train = manifest[manifest.split == "train"]
    normal_before = int((train.label == "NORMAL").sum())
    metrics = {
        "normal_before": normal_before,
        "pneumonia": int((train.label == "PNEUMONIA").sum()),
        "generated": len(generated),
        "normal_after": normal_before + int((generated["class"] == "normal").sum()),
        "target": target,
        "method": p.method,
    }
    if params.task == "three_class":  # binary runs keep balance.json as it was
        before = {c: int((train["class"] == c).sum()) for c in CLASSES}
        made = {c: int((generated["class"] == c).sum()) for c in CLASSES}
        metrics |= {"task": params.task, "class_targets": targets, "class_before": before,
                    "class_after": {c: before[c] + made[c] for c in CLASSES}}
    write_json(metrics, BALANCE_JSON)
    log.info("generated %d images; NORMAL %d -> %d", len(generated), normal_before,
             metrics["normal_after"])
    return metrics

