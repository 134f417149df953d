"""Typed, validated parameters (params.yaml) and the pipeline's file layout.

params.yaml is parsed once, at the edge, into frozen dataclasses. A wrong key, type or range fails
with a `ParamsError` that names the key and says how to fix it. Values DVC writes back after
`dvc exp run -S lr=2e-6` (``lr: 2e-06``, which PyYAML reads as the *string* '2e-06') are cast to
the declared type here, so no stage ever sees a string where it expects a float.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class PipelineError(Exception):
    """An error the user can fix (bad input, bad params). Stages print it without a traceback."""


class ParamsError(PipelineError):
    """A key of params.yaml is missing, unknown, of the wrong type or out of range."""


# --------------------------------------------------------------------------------------------
# File layout: every stage reads and writes these paths, relative to the repository root (the
# directory DVC runs the stage in). dvc.yaml declares the same paths as deps/outs.
# --------------------------------------------------------------------------------------------
DATA = Path("data")
IMAGES_DIR = DATA / "images"  # ingest: decoded, resized 8-bit grayscale PNGs
MANIFEST = DATA / "manifest.csv"  # ingest: one row per source image
# manifest.csv's columns: written by ingest, required by validate.
MANIFEST_COLUMNS = [
    "image_id", "path", "label", "class", "patient_id", "split",
    "source_file", "sha256", "width", "height", "mode", "png_sha256",
]
INGEST_REPORT = DATA / "ingest_report.json"  # ingest: bad files (skipped or fatal)
BALANCED_DIR = DATA / "balanced"  # balance: generated NORMAL PNGs
BALANCED_MANIFEST = DATA / "balanced.csv"  # balance: one row per generated image
SPLIT_CSV = DATA / "split.csv"  # split: the contract train/evaluate read

METRICS = Path("metrics")
VALIDATION_JSON = METRICS / "validation.json"
VALIDATION_MD = METRICS / "validation.md"
BALANCE_JSON = METRICS / "balance.json"
SPLIT_JSON = METRICS / "split.json"
TRAIN_JSON = METRICS / "train.json"
TRAIN_HISTORY = METRICS / "train_history.csv"
EVALUATE_JSON = METRICS / "evaluate.json"
TABLE3_JSON = METRICS / "table3.json"
TABLE3_MD = METRICS / "table3.md"
CONFUSION_CSV = METRICS / "confusion.csv"
CONFUSION_PNG = METRICS / "confusion.png"
ROC_CSV = METRICS / "roc.csv"
PREDICTIONS_CSV = METRICS / "predictions.csv"

MODELS = Path("models")
MODEL_FILE = MODELS / "model.keras"
MLFLOW_RUN_FILE = MODELS / "mlflow_run.json"  # train -> evaluate: which MLflow run to continue

LABELS = ("NORMAL", "PNEUMONIA")  # index = model target: 0 = NORMAL, 1 = PNEUMONIA (paper Fig. 4)
CLASSES = ("normal", "bacteria", "virus")
BACKBONES = ("densenet201", "densenet121", "resnet50")


# --------------------------------------------------------------------------------------------
# Parameter schema. `check` in field metadata: (predicate, "must be ..." text).
# --------------------------------------------------------------------------------------------
def _ck(pred: Any, text: str) -> dict[str, Any]:
    return {"check": (pred, text)}


_pos = _ck(lambda v: v > 0, "must be > 0")
_nonneg = _ck(lambda v: v >= 0, "must be >= 0")
_prob = _ck(lambda v: 0 <= v <= 1, "must be between 0 and 1")
_frac_open = _ck(lambda v: 0 < v < 1, "must be strictly between 0 and 1")


@dataclass(frozen=True)
class DataParams:
    raw: str  # dataset folder (Kaggle or Mendeley layout) or a .zip of either
    image_size: int = field(
        default=224, metadata=_ck(lambda v: 32 <= v <= 1024, "must be between 32 and 1024 pixels")
    )


@dataclass(frozen=True)
class IngestParams:
    on_bad_file: Literal["fail", "skip"] = "fail"
    workers: int = field(default=0, metadata=_nonneg)  # 0 = one per CPU core


@dataclass(frozen=True)
class ValidateParams:
    table1_counts: bool = True  # expect the paper's Table I counts per split and label
    leakage: Literal["warn", "error"] = "warn"  # duplicates / patient overlap: warning or error
    min_side: int = field(default=64, metadata=_pos)  # smallest accepted original width/height
    max_side: int = field(default=10000, metadata=_pos)


@dataclass(frozen=True)
class BalanceParams:
    target_normal: int = field(default=3849, metadata=_nonneg)  # NORMAL training images after
    seed: int = 42
    workers: int = field(default=0, metadata=_nonneg)  # 0 = one per CPU core
    skew_magnitude: float = field(default=0.1, metadata=_prob)  # Augmentor Skew magnitude
    distortion_grid: int = field(default=4, metadata=_pos)  # Augmentor Distort grid width/height
    distortion_magnitude: int = field(default=2, metadata=_nonneg)
    # Magnification factor range (1.1 = up to 10 % zoom-in at a random position), applied with
    # Augmentor ZoomRandom(percentage_area=1/factor). Below 1 would crop outside the image.
    zoom_min: float = field(default=1.0, metadata=_ck(lambda v: v >= 1, "must be >= 1"))
    zoom_max: float = field(default=1.1, metadata=_ck(lambda v: 1 <= v <= 2, "must be 1 to 2"))
    rotation: int = field(
        default=5, metadata=_ck(lambda v: 0 <= v <= 25, "must be between 0 and 25 degrees")
    )


@dataclass(frozen=True)
class SplitParams:
    val_fraction: float = field(default=0.2, metadata=_frac_open)
    seed: int = 42


@dataclass(frozen=True)
class ModelParams:
    backbone: Literal["densenet201", "densenet121", "resnet50"] = "densenet201"
    weights: str = "imagenet"  # imagenet | none | path to a weights file (.h5 / .weights.h5)
    trainable_layers: int = field(default=30, metadata=_nonneg)  # last N backbone layers
    dense_units: int = field(default=256, metadata=_pos)
    dropout: float = field(
        default=0.5, metadata=_ck(lambda v: 0 <= v < 1, "must be in [0, 1)")
    )


@dataclass(frozen=True)
class AugmentParams:
    """Online augmentation ranges (Keras preprocessing layers). Never flips: X-ray views are
    standardised, a mirrored heart is not a chest X-ray."""

    rotation: float = field(default=10.0, metadata=_ck(lambda v: 0 <= v <= 45, "must be 0-45 degrees"))
    zoom: float = field(default=0.1, metadata=_ck(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    shift: float = field(default=0.1, metadata=_ck(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    brightness: float = field(default=0.1, metadata=_ck(lambda v: 0 <= v < 1, "must be in [0, 1)"))


@dataclass(frozen=True)
class TrainParams:
    epochs: int = field(default=100, metadata=_pos)
    batch_size: int = field(default=32, metadata=_pos)  # per replica
    seed: int = 42
    reduce_lr_factor: float = field(default=0.3, metadata=_frac_open)
    reduce_lr_patience: int = field(default=2, metadata=_nonneg)
    min_lr: float = field(default=1e-9, metadata=_nonneg)
    early_stopping_patience: int = field(default=5, metadata=_nonneg)
    mixed_precision: Literal["auto", "on", "off"] = "auto"  # auto = on when a GPU is visible
    # auto = MirroredStrategy on > 1 GPU (or > 1 logical CPU device); mirrored = always
    distribute: Literal["auto", "none", "mirrored"] = "auto"
    # Split the CPU into N logical devices when no GPU is visible: MirroredStrategy on a CPU
    # (a test of the multi-replica path, not a speed-up).
    cpu_devices: int = field(default=1, metadata=_pos)
    jit_compile: bool = False  # XLA
    augment: AugmentParams = AugmentParams()


@dataclass(frozen=True)
class EvaluateParams:
    threshold: float = field(default=0.5, metadata=_frac_open)
    batch_size: int = field(default=64, metadata=_pos)


@dataclass(frozen=True)
class Params:
    lr: float = field(metadata=_pos)  # Adam learning rate (paper: 2e-6); top level for `-S lr=`
    data: DataParams
    ingest: IngestParams = IngestParams()
    validate: ValidateParams = ValidateParams()
    balance: BalanceParams = BalanceParams()
    split: SplitParams = SplitParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
def _fix_hint(key: str, example: Any) -> str:
    return f"Fix it in params.yaml, or override it with `dvc exp run -S {key}={example}`."


def _cast(value: Any, tp: Any, key: str) -> Any:
    """Cast a YAML value to the declared type `tp`, or raise ParamsError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        # YAML reads `none`/`off`/`on` unquoted as strings or booleans depending on the spelling.
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed):
            value = {True: "on", False: "off"}[value]
        if isinstance(value, str):
            value = value.strip().lower()
        if value not in allowed:
            raise ParamsError(
                f"params.yaml: `{key}` is {value!r}; it must be one of {', '.join(map(str, allowed))}. "
                + _fix_hint(key, allowed[0])
            )
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
            return value.strip().lower() in ("true", "yes")
        raise ParamsError(
            f"params.yaml: `{key}` is {value!r}; it must be true or false. " + _fix_hint(key, "true")
        )
    if tp is int:
        if isinstance(value, bool):
            raise ParamsError(f"params.yaml: `{key}` is {value!r}; it must be a whole number.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ParamsError(
            f"params.yaml: `{key}` is {value!r}; it must be a whole number. " + _fix_hint(key, 1)
        )
    if tp is float:
        # DVC writes `-S lr=2e-6` back as `lr: 2e-06`, which YAML 1.1 (PyYAML) reads as a string.
        if isinstance(value, bool):
            raise ParamsError(f"params.yaml: `{key}` is {value!r}; it must be a number.")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ParamsError(
            f"params.yaml: `{key}` is {value!r}; it must be a number. " + _fix_hint(key, "0.1")
        )
    if tp is str:
        if value is None:
            raise ParamsError(f"params.yaml: `{key}` is empty; it needs a value.")
        return str(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise TypeError(f"unsupported parameter type {tp!r} for {key}")  # programming error


def _build(cls: type, raw: Any, prefix: str = "") -> Any:
    where = f"`{prefix}`" if prefix else "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {where} must be a mapping of keys, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        dotted = [f"`{prefix}.{k}`" if prefix else f"`{k}`" for k in unknown]
        known = ", ".join(f"{prefix}.{k}" if prefix else k for k in fields)
        raise ParamsError(
            f"params.yaml: unknown key(s) {', '.join(dotted)} in {where}. "
            f"Known keys: {known}. Check the spelling."
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamsError(f"params.yaml: required key `{key}` is missing. Add it to params.yaml.")
            continue
        value = _cast(raw[name], hints[name], key)
        check = f.metadata.get("check")
        if check and not check[0](value):
            raise ParamsError(
                f"params.yaml: `{key}` is {raw[name]!r}; it {check[1]}. "
                + _fix_hint(key, f.default if f.default is not dataclasses.MISSING else "...")
            )
        kwargs[name] = value
    return cls(**kwargs)


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping (as read from params.yaml) into `Params`."""
    params = _build(Params, raw)
    _check_cross_field(params)
    return params


def _check_cross_field(p: Params) -> None:
    if p.balance.zoom_min > p.balance.zoom_max:
        raise ParamsError(
            f"params.yaml: `balance.zoom_min` ({p.balance.zoom_min}) is larger than "
            f"`balance.zoom_max` ({p.balance.zoom_max}). Make zoom_min <= zoom_max."
        )
    w = p.model.weights
    if w not in ("imagenet", "none") and not Path(w).is_file():
        raise ParamsError(
            f"params.yaml: `model.weights` is {w!r}, which is neither `imagenet`, `none` nor an "
            "existing weights file. Give the path to a Keras weights file (e.g. "
            "~/.keras/models/densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5), or use "
            "`imagenet` (downloaded by Keras) or `none` (random initialisation)."
        )


def load_params(path: str | os.PathLike[str] = "params.yaml") -> Params:
    """Read and validate params.yaml (default: the one in the current directory)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(
            f"{path} not found. Run the stage from the repository root (where dvc.yaml is)."
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping of keys (lr, data, train, ...).")
    return parse_params(raw)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested params/dicts to dotted keys (for MLflow, reports)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


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

