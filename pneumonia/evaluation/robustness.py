"""`pneumonia robustness`: the model on controlled shifts of the test images, against the clean set.

The paper: "we can not say how robust our model really is to any data besides the data we have
at hand". This command does not answer that for other hospitals (no other data is at hand), but
it measures how the model's test metrics move when the same test images arrive the way images
from elsewhere often do: at another resolution, with another gamma or contrast, noisier, JPEG
recompressed, slightly rotated, or inverted (a MONOCHROME1 DICOM whose photometric
interpretation got lost: bone dark, air bright). Each shifted image is encoded as a file
(PNG, or JPEG for the recompression) and decoded by the pipeline's own code
(`pneumonia.inference.sources.to_input`), exactly as `pneumonia predict` and the served model
would read it.

For each shift: accuracy (at the model's decision threshold) and ROC AUC, each with a 95 %
patient-grouped bootstrap interval, and the PAIRED difference shifted - clean with its interval
(`stats.bootstrap.paired_deltas`: both scored on the same resampled patients, so the interval
reflects that the images are the same), and a verdict: `worse` when the interval lies below 0.
Inference only (no training). Outputs in --out (default metrics/robustness/): robustness.json,
robustness.md (the table) and robustness.png (the paired differences with their intervals).

A three-class model is scored in its binary view, P(PNEUMONIA) = P(bacteria) + P(virus).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.dataset.images import encode_png, open_image, to_gray8
from pneumonia.errors import PipelineError
from pneumonia.files import write_json
from pneumonia.inference.sources import to_input
from pneumonia.model.tasks import pneumonia_probability
from pneumonia.paths import METRICS
from pneumonia.stats.bootstrap import metric_intervals, paired_deltas

log = logging.getLogger(__name__)

OUT_DIR = METRICS / "robustness"
N_RESAMPLES = 2000
LEVEL = 0.95
REPORTED = ("accuracy", "roc_auc")


@dataclass(frozen=True)
class Shift:
    """One controlled change of an image: `apply(gray image, rng) -> image file bytes`."""

    name: str
    description: str
    apply: Callable[[Any, np.random.Generator], bytes]


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    return encode_png(Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "L"))


def _resized(factor: float) -> Callable[[Any, np.random.Generator], bytes]:
    def apply(img: Any, rng: np.random.Generator) -> bytes:
        from PIL import Image

        w, h = img.size
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        method = Image.Resampling.BILINEAR if factor < 1 else Image.Resampling.BICUBIC
        return encode_png(img.resize(size, method))

    return apply


def _gamma(g: float) -> Callable[[Any, np.random.Generator], bytes]:
    return lambda img, rng: _png(255.0 * (np.asarray(img, np.float64) / 255.0) ** g)


def _contrast(factor: float) -> Callable[[Any, np.random.Generator], bytes]:
    def apply(img: Any, rng: np.random.Generator) -> bytes:
        x = np.asarray(img, np.float64)
        return _png(x.mean() + factor * (x - x.mean()))  # around the image's mean gray

    return apply


def _noise(sigma: float) -> Callable[[Any, np.random.Generator], bytes]:
    return lambda img, rng: _png(np.asarray(img, np.float64)
                                 + rng.normal(0.0, sigma, (img.height, img.width)))


def _jpeg(quality: int) -> Callable[[Any, np.random.Generator], bytes]:
    def apply(img: Any, rng: np.random.Generator) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()

    return apply


def _rotated(degrees: float) -> Callable[[Any, np.random.Generator], bytes]:
    def apply(img: Any, rng: np.random.Generator) -> bytes:
        from PIL import Image

        angle = degrees * (1 if rng.random() < 0.5 else -1)
        # black corners, as a film rotated on a scanner shows them
        return encode_png(img.rotate(angle, Image.Resampling.BILINEAR, fillcolor=0))

    return apply


def _inverted(img: Any, rng: np.random.Generator) -> bytes:
    return _png(255.0 - np.asarray(img, np.float64))


SHIFTS: tuple[Shift, ...] = (
    Shift("resolution_0.5x", "half the width and height (bilinear), then the pipeline's resize",
          _resized(0.5)),
    Shift("resolution_0.25x", "a quarter of the width and height", _resized(0.25)),
    Shift("resolution_2x", "twice the width and height (bicubic), then the pipeline's resize",
          _resized(2.0)),
    Shift("gamma_0.67", "gamma 0.67 (brighter mid-tones)", _gamma(0.67)),
    Shift("gamma_1.5", "gamma 1.5 (darker mid-tones)", _gamma(1.5)),
    Shift("contrast_0.6", "contrast x 0.6 around the image's mean", _contrast(0.6)),
    Shift("contrast_1.4", "contrast x 1.4 around the image's mean (clipped)", _contrast(1.4)),
    Shift("noise_8", "Gaussian noise, sigma 8 grey levels", _noise(8.0)),
    Shift("noise_20", "Gaussian noise, sigma 20 grey levels", _noise(20.0)),
    Shift("jpeg_30", "JPEG recompression at quality 30", _jpeg(30)),
    Shift("jpeg_10", "JPEG recompression at quality 10", _jpeg(10)),
    Shift("rotate_5", "rotated 5 degrees (random direction), black corners", _rotated(5.0)),
    Shift("rotate_10", "rotated 10 degrees (random direction), black corners", _rotated(10.0)),
    Shift("inverted", "grey levels inverted (MONOCHROME1 read as MONOCHROME2)", _inverted),
)


def select_shifts(spec: str | None) -> tuple[Shift, ...]:
    """The shifts named in `spec` (comma-separated; all when None); PipelineError for an unknown
    name (`pneumonia robustness --shifts`, `pneumonia site check-study --shifts`)."""
    if spec is None:
        return SHIFTS
    by_name = {s.name: s for s in SHIFTS}
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        raise PipelineError(f"--shifts {spec!r}: unknown shift(s) {', '.join(unknown) or '-'}. "
                            f"Known: {', '.join(by_name)}.")
    return tuple(by_name[n] for n in names)


def image_rng(seed: int, shift: str, image_id: str) -> np.random.Generator:
    """A per-image, per-shift generator, stable across processes (built-in hash() is not)."""
    digest = hashlib.sha256(f"{seed}:{shift}:{image_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def shifted_inputs(files: list[bytes], ids: list[str], shift: Shift | None, size: int,
                   seed: int, workers: int) -> np.ndarray:
    """(N, size, size, 1) model inputs of the images, shifted (None = clean: the file as is),
    each decoded by the pipeline's `to_input`."""
    def one(i: int) -> np.ndarray:
        if shift is None:
            return to_input(files[i], size)
        gray = to_gray8(open_image(files[i]))
        return to_input(shift.apply(gray, image_rng(seed, shift.name, ids[i])), size)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return np.stack(list(pool.map(one, range(len(files)))))


def model_probability(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """P(PNEUMONIA) of each input (binary view of a three-class model)."""
    out = [np.asarray(model.predict_on_batch(x[i:i + batch_size]))
           for i in range(0, len(x), batch_size)]
    return pneumonia_probability(np.concatenate(out))


def _interval(row: dict[str, Any]) -> dict[str, float | None]:
    def clean(v: Any) -> float | None:
        return float(v) if v is not None and np.isfinite(v) else None

    return {"value": clean(row["value"]), "ci_low": clean(row["ci_low"]),
            "ci_high": clean(row["ci_high"])}


def score_shifts(model: Any, files: list[bytes], ids: list[str], y: np.ndarray,
                 groups: np.ndarray, threshold: float, shifts: tuple[Shift, ...] = SHIFTS,
                 n_resamples: int = N_RESAMPLES, seed: int = 0, batch_size: int = 32,
                 workers: int = 2, progress: Callable[[str], None] | None = None
                 ) -> dict[str, Any]:
    """The clean images and each shift: accuracy and ROC AUC with intervals, and the paired
    differences shifted - clean with their intervals and verdicts (module docstring)."""
    started = time.monotonic()
    size = int(model.input_shape[1])
    y = np.asarray(y, dtype=int)
    clean_prob = model_probability(model, shifted_inputs(files, ids, None, size, seed, workers),
                                   batch_size)
    clean = metric_intervals(y, clean_prob, threshold=threshold, groups=groups,
                             n_resamples=n_resamples, seed=seed, level=LEVEL)
    report: dict[str, Any] = {
        "n_images": int(y.size), "n_patients": len(set(groups.tolist())),
        "threshold": threshold, "image_size": size, "bootstrap_resamples": n_resamples,
        "seed": seed, "ci_level": LEVEL,
        "clean": {m: _interval(clean[m]) for m in REPORTED}, "shifts": [],
    }
    if progress:
        progress("clean")
    for shift in shifts:
        prob = model_probability(
            model, shifted_inputs(files, ids, shift, size, seed, workers), batch_size)
        own = metric_intervals(y, prob, threshold=threshold, groups=groups,
                               n_resamples=n_resamples, seed=seed, level=LEVEL)
        paired = paired_deltas(y, clean_prob, prob, groups, threshold, threshold, n_resamples,
                               seed, LEVEL)
        entry: dict[str, Any] = {"name": shift.name, "description": shift.description}
        for m in REPORTED:
            d = paired[m]
            entry[m] = _interval(own[m])
            entry[f"{m}_delta"] = {
                "delta": float(d["delta"]) if np.isfinite(d["delta"]) else None,
                "ci_low": float(d["ci_low"]) if np.isfinite(d["ci_low"]) else None,
                "ci_high": float(d["ci_high"]) if np.isfinite(d["ci_high"]) else None,
                "verdict": d["verdict"],
            }
        report["shifts"].append(entry)
        if progress:
            progress(shift.name)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _cell(iv: dict[str, Any]) -> str:
    if iv["value"] is None:
        return "n/a"
    return f"{iv['value']:.3f} [{iv['ci_low']:.3f}, {iv['ci_high']:.3f}]"


def _delta(d: dict[str, Any]) -> str:
    if d["delta"] is None:
        return "n/a"
    return f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] {d['verdict']}"


def markdown(report: dict[str, Any]) -> str:
    """robustness.md: one row per condition, values and paired differences with intervals."""
    lines = [
        f"# Robustness: {report['model']} on shifted test images",
        "",
        (f"{report['n_images']} test images ({report['n_patients']} patients) at "
        f"{report['image_size']} px, threshold {report['threshold']:g}; 95 % intervals from a "
        f"patient-grouped bootstrap ({report['bootstrap_resamples']} resamples, seed "
        f"{report['seed']}); differences are paired (shifted - clean on the same resampled "
        "patients): `worse` = the interval lies below 0, `better` above, else `within noise`."),
        "",
        "| condition | accuracy | Δ accuracy | ROC AUC | Δ ROC AUC |",
        "|---|---|---|---|---|",
        (f"| clean | {_cell(report['clean']['accuracy'])} | | "
        f"{_cell(report['clean']['roc_auc'])} | |"),
    ]
    for s in report["shifts"]:
        lines.append(f"| {s['name']}: {s['description']} | {_cell(s['accuracy'])} | "
                     f"{_delta(s['accuracy_delta'])} | {_cell(s['roc_auc'])} | "
                     f"{_delta(s['roc_auc_delta'])} |")
    lines += ["", f"Scored in {report['seconds']:.0f} s ({report.get('cpu', 'this machine')})."]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """The paired differences with their intervals, one row per shift, accuracy and ROC AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = report["shifts"]
    names = [s["name"] for s in shifts]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.35 * len(names) + 1.6), dpi=110, sharey=True)
    for ax, metric in zip(axes, REPORTED, strict=True):
        for i, s in enumerate(shifts):
            d = s[f"{metric}_delta"]
            if d["delta"] is None:
                continue
            color = {"worse": "tab:red", "better": "tab:green"}.get(d["verdict"], "tab:grey")
            ax.errorbar(d["delta"], i, xerr=[[d["delta"] - d["ci_low"]],
                                             [d["ci_high"] - d["delta"]]],
                        fmt="o", color=color, capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(f"{metric.replace('_', ' ')}: shifted - clean (95 % CI)")
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle(f"{report['n_images']} test images, {report['n_patients']} patients "
                 "(red: significantly worse)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """robustness.json, robustness.md and robustness.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "robustness.json", out_dir / "robustness.md", out_dir / "robustness.png"]
    write_json(report, paths[0])
    paths[1].write_text(markdown(report), encoding="utf-8")
    plot(report, paths[2])
    return paths


# --------------------------------------------------------------------------------------------
# The machine a measurement belongs to
# --------------------------------------------------------------------------------------------
def cpu_name() -> str:
    """The CPU's model name: /proc/cpuinfo on Linux, else platform.processor() (often empty on
    Linux, hence /proc first; psutil has no API for it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_description() -> str:
    """`<model name>, <n> cores` (the machine the timing belongs to)."""
    return f"{cpu_name()}, {os.cpu_count()} cores"
