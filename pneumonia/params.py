"""Typed, validated parameters (params.yaml).

params.yaml is parsed once, at the edge, into frozen dataclasses. A wrong key, type or range fails
with a `ParamsError` that names the key and says how to fix it. Values DVC writes back after
`dvc exp run -S lr=2e-6` (``lr: 2e-06``, which PyYAML reads as the *string* '2e-06') are cast to
the declared type here, so no stage ever sees a string where it expects a float.
"""

from __future__ import annotations

import dataclasses
import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pneumonia.params_cast import ParamsError, build_dataclass, fix_hint


# --------------------------------------------------------------------------------------------
# Parameter schema. `check` in field metadata: (predicate, "must be ..." text), read by the
# caster (pneumonia.params_cast).
# --------------------------------------------------------------------------------------------
def _rule(pred: Any, text: str) -> dict[str, Any]:
    """Field metadata: the value must satisfy `pred`; `text` says how ("must be > 0")."""
    return {"check": (pred, text)}


_pos = _rule(lambda v: v > 0, "must be > 0")
_nonneg = _rule(lambda v: v >= 0, "must be >= 0")
_prob = _rule(lambda v: 0 <= v <= 1, "must be between 0 and 1")
_frac_open = _rule(lambda v: 0 < v < 1, "must be strictly between 0 and 1")

# `model.backbone` values (pneumonia/model/backbones.py builds them). Declared here so that
# reading params never imports the model package (every stage reads params).
Backbone = Literal[
    "densenet201", "densenet121", "resnet50", "efficientnetb0", "mobilenetv3small", "small_cnn"
]


@dataclass(frozen=True)
class DataParams:
    raw: str  # dataset folder or .zip (Kaggle/Mendeley layout, or any tree: `layout: folders`)
    image_size: int = field(
        default=224, metadata=_rule(lambda v: 32 <= v <= 1024, "must be between 32 and 1024 pixels")
    )
    # kermany: the Kaggle/Mendeley release (its file names give patients and causes);
    # folders: any tree of class folders, any file names (pneumonia/dataset/folders.py).
    layout: Literal["kermany", "folders"] = "kermany"
    # folders layout: the class-folder names (case-insensitive) of each label.
    normal_folders: tuple[str, ...] = ("normal",)
    pneumonia_folders: tuple[str, ...] = ("pneumonia",)
    # folders layout: a CSV inside data.raw with columns path, patient_id (optional: split,
    # label, cause); "" = none (every image its own patient).
    metadata: str = ""
    # folders layout without train/test folders or a split column: the share of images (whole
    # patients, per label) drawn for test at ingest, before balancing can see them.
    test_fraction: float = field(default=0.2, metadata=_frac_open)
    test_seed: int = 42
    # Decompression-bomb cap for every decoder (ingest, predict, the served model): an image whose
    # header announces more pixels is refused before decoding. At most 89: Pillow refuses more
    # than 89.5 MP (Image.MAX_IMAGE_PIXELS) anyway.
    max_megapixels: float = field(
        default=50.0, metadata=_rule(lambda v: 0 < v <= 89, "must be > 0 and at most 89")
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
    # augmentor: the paper (Augmentor grows NORMAL to target_normal); class_weight: train on the
    # originals, the loss weighs each class by n / (2 n_class); none: originals, unweighted.
    method: Literal["augmentor", "class_weight", "none"] = "augmentor"
    target_normal: int = field(default=3849, metadata=_nonneg)  # NORMAL training images after
    seed: int = 42
    workers: int = field(default=0, metadata=_nonneg)  # 0 = one per CPU core
    skew_magnitude: float = field(default=0.1, metadata=_prob)  # Augmentor Skew magnitude
    distortion_grid: int = field(default=4, metadata=_pos)  # Augmentor Distort grid width/height
    distortion_magnitude: int = field(default=2, metadata=_nonneg)
    # Magnification factor range (1.1 = up to 10 % zoom-in at a random position), applied with
    # Augmentor ZoomRandom(percentage_area=1/factor). Below 1 would crop outside the image.
    zoom_min: float = field(default=1.0, metadata=_rule(lambda v: v >= 1, "must be >= 1"))
    zoom_max: float = field(default=1.1, metadata=_rule(lambda v: 1 <= v <= 2, "must be 1 to 2"))
    rotation: int = field(
        default=5, metadata=_rule(lambda v: 0 <= v <= 25, "must be between 0 and 25 degrees")
    )


@dataclass(frozen=True)
class SplitParams:
    val_fraction: float = field(default=0.2, metadata=_frac_open)
    seed: int = 42
    # true (the paper's order: balance, then split): generated images are split with their
    # source's patient, so validation holds generated NORMAL images too. false: validation holds
    # original images only; a generated image goes to train when its source does, and is left
    # out when its source is in validation (a distorted copy of a validation image in train
    # would leak it).
    generated_in_val: bool = True


@dataclass(frozen=True)
class ModelParams:
    # densenet201 (the paper) | densenet121 | resnet50 | efficientnetb0 | mobilenetv3small |
    # small_cnn (no pretrained weights): pneumonia/model/backbones.py
    backbone: Backbone = "densenet201"
    weights: str = "imagenet"  # imagenet | none | path to a weights file (.h5 / .weights.h5)
    trainable_layers: int = field(default=30, metadata=_nonneg)  # last N backbone layers
    dense_units: int = field(default=256, metadata=_pos)
    dropout: float = field(
        default=0.5, metadata=_rule(lambda v: 0 <= v < 1, "must be in [0, 1)")
    )
    # Pretrained backbones: keep BatchNormalization in inference mode among the trainable layers
    # (Keras transfer-learning guide). false = the paper's literal reading: all parameters of the
    # last `trainable_layers` layers are fitted, BN statistics included.
    freeze_batchnorm: bool = True
    # Momentum of the moving mean/variance of the BatchNormalization layers that train (Keras'
    # default 0.99). Inference uses those moving statistics; at 0.99 they need several hundred
    # steps to forget their initial values (0 and 1), so a from-scratch run of a few dozen steps
    # (the demo, a small dataset) predicts one constant in inference mode. 0.9 settles in ~50.
    bn_momentum: float = field(default=0.99, metadata=_frac_open)


@dataclass(frozen=True)
class AugmentParams:
    """Online augmentation ranges (Keras preprocessing layers). Never flips: X-ray views are
    standardised, a mirrored heart is not a chest X-ray."""

    rotation: float = field(default=10.0, metadata=_rule(lambda v: 0 <= v <= 45, "must be 0-45 degrees"))
    zoom: float = field(default=0.1, metadata=_rule(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    shift: float = field(default=0.1, metadata=_rule(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    brightness: float = field(default=0.1, metadata=_rule(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    # multiplicative: pixels x U(1 - brightness, 1 + brightness), as the paper's
    # ImageDataGenerator(brightness_range=...) does (black stays black); additive: + U(-b, b) x 255,
    # as keras.layers.RandomBrightness does (lifts black borders).
    brightness_mode: Literal["multiplicative", "additive"] = "multiplicative"
    # true: zoom factors for x and y drawn independently, as ImageDataGenerator(zoom_range=...)
    # does; false: one factor for both axes (keras.layers.RandomZoom, aspect kept).
    zoom_independent: bool = True


@dataclass(frozen=True)
class TrainParams:
    epochs: int = field(default=100, metadata=_pos)
    batch_size: int = field(default=32, metadata=_pos)  # per replica
    seed: int = 42
    reduce_lr_factor: float = field(default=0.3, metadata=_frac_open)
    reduce_lr_patience: int = field(default=2, metadata=_nonneg)
    min_lr: float = field(default=1e-9, metadata=_nonneg)
    early_stopping_patience: int = field(default=5, metadata=_nonneg)
    # auto = mixed float16 when a GPU is visible; on = mixed float16; bfloat16 = mixed bfloat16
    # (pays only on CPUs/GPUs with bf16 matrix units: measure, docs/experiments.md); off = float32
    mixed_precision: Literal["auto", "on", "off", "bfloat16"] = "auto"
    # auto = MirroredStrategy on > 1 GPU (or > 1 logical CPU device); mirrored = always
    distribute: Literal["auto", "none", "mirrored"] = "auto"
    # Split the CPU into N logical devices when no GPU is visible: MirroredStrategy on a CPU
    # (a test of the multi-replica path, not a speed-up).
    cpu_devices: int = field(default=1, metadata=_pos)
    jit_compile: bool = False  # XLA
    # true: TensorFlow op determinism (tf.config.experimental.enable_op_determinism) on top of
    # the seeds, so the same seeded run repeats exactly on the same machine (slower:
    # docs/reliability.md).
    deterministic: bool = False
    # plateau: the paper's ReduceLROnPlateau(val_loss, reduce_lr_patience) at a constant `lr`;
    # cosine: linear warm-up over warmup_epochs, then cosine decay to 0 at train.epochs (per step).
    lr_schedule: Literal["plateau", "cosine"] = "plateau"
    warmup_epochs: int = field(default=0, metadata=_nonneg)
    # Exponential moving average of the weights (Adam's use_ema): validation, the best-epoch
    # checkpoint and the saved model use the average. 0 = off (the paper); 0.99-0.999 typical.
    ema_momentum: float = field(
        default=0.0, metadata=_rule(lambda v: 0 <= v < 1, "must be in [0, 1) (0 = off)"))
    # Targets y -> y (1 - s) + s / 2 in the binary cross-entropy (0 = off, the paper).
    label_smoothing: float = field(
        default=0.0, metadata=_rule(lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"))
    # best: the weights of the epoch with the lowest val_loss (EarlyStopping restore_best_weights,
    # the paper's set-up); last: the weights after the last epoch (with a schedule that decays
    # to 0 and EMA, the usual choice: no selection on the validation set).
    keep_weights: Literal["best", "last"] = "best"
    augment: AugmentParams = AugmentParams()


@dataclass(frozen=True)
class EvaluateParams:
    # P(PNEUMONIA) >= threshold -> PNEUMONIA: the operating point of the reported test metrics and
    # of the Table III comparison (0.5: the paper states none). Never tune it on the test set: a
    # threshold is chosen on the validation images by `threshold_rule: youden` (reported beside
    # it; `pneumonia predict --threshold chosen` uses it).
    threshold: float = field(default=0.5, metadata=_frac_open)
    batch_size: int = field(default=64, metadata=_pos)
    # fixed: threshold_chosen = threshold; youden: maximise sensitivity + specificity - 1 on the
    # validation images (originals only), reported as threshold_chosen with its test metrics.
    threshold_rule: Literal["fixed", "youden"] = "fixed"
    # Patient-grouped bootstrap behind every 95 % interval; fewer than 200 resamples make the
    # 2.5 % / 97.5 % percentiles rest on a handful of values.
    bootstrap_resamples: int = field(
        default=2000, metadata=_rule(lambda v: v >= 200, "must be >= 200 (2000 recommended)")
    )
    seed: int = 42  # seeds the bootstrap: the same predictions always give the same intervals
    # The leak-free test subset's reading of the NORMAL file names (pneumonia.dataset.validate,
    # PATIENT_RULES): strict = the ids as written; merge_normal2 = NORMAL2-IM-0095 is patient
    # IM-0095 (a published audit's reading). The other reading is reported beside it.
    leakfree_patient_rule: Literal["strict", "merge_normal2"] = "strict"
    # Model registry (pneumonia.registry, the gate: pneumonia.gate): each evaluated model is a
    # version of this registered model; alias `champion` moves to it only if test accuracy >=
    # champion_min_accuracy, its primary metrics are defined, and it is non-inferior (lower
    # bound of the paired 95 % accuracy difference > -champion_margin) to the current champion
    # and to the anchor (the best champion on the same test set, compared by its predictions).
    registry_name: str = field(
        default="pneumonia-densenet201",
        metadata=_rule(lambda v: bool(v.strip()) and "/" not in v and "@" not in v,
                     "must be a non-empty name without '/' or '@'"),
    )
    champion_min_accuracy: float = field(default=0.9, metadata=_prob)
    # Non-inferiority margin against the champion and the anchor: a chain of slightly worse
    # models cannot take the champion more than this below the best one. Error rates at 0.02
    # (Monte Carlo, docs/statistics.md): a model 0.02 worse promoted 3 %, an equally good one
    # blocked 24-64 %.
    champion_margin: float = field(default=0.02, metadata=_prob)
    # Grad-CAM overlays (metrics/gradcam/, MLflow evaluate/gradcam/): the most confident test
    # errors (at most explain_max_errors) and explain_correct_per_class correct cases per class.
    explain_max_errors: int = field(default=6, metadata=_nonneg)
    explain_correct_per_class: int = field(default=1, metadata=_nonneg)
    # Split conformal prediction sets (pneumonia.evaluation.confidence): calibrated on the
    # validation originals so that a set holds the true label for >= 1 - alpha of images
    # exchangeable with them; a set that is not one label = refer to a radiologist.
    conformal_alpha: float = field(default=0.05, metadata=_frac_open)


@dataclass(frozen=True)
class AblationParams:
    """`pneumonia ablation`: one DVC experiment per arm (backbone x balancing x BatchNorm) and
    seed. No stage reads this section; the command turns it into `-S` overrides."""

    preset: Literal["cpu", "paper"] = "cpu"  # cpu: 2 cores, from scratch; paper: params.yaml
    backbones: tuple[Backbone, ...] = ("densenet121",)
    balance_methods: tuple[Literal["augmentor", "class_weight", "none"], ...] = (
        "augmentor", "class_weight", "none")
    freeze_batchnorm: tuple[bool, ...] = (True,)
    seeds: tuple[int, ...] = (1, 2, 3)  # train.seed of each repetition


@dataclass(frozen=True)
class RecipeParams:
    """`pneumonia recipe`: the CPU recipe search, candidates (pneumonia/experiments/presets.py)
    x seeds. No stage reads this section."""

    candidates: tuple[str, ...] = ("prev-cpu",)
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class ServeParams:
    """The served model's memory bounds (pneumonia/inference/pyfunc.py), recorded in its config
    when it is logged. No stage reads them otherwise."""

    # Requests decoding images at once in one server process (the others wait): a 49-megapixel
    # PNG takes ~0.2-0.3 GB while decoded, so this bounds the decoding memory.
    max_concurrent_decodes: int = field(default=2, metadata=_pos)
    # Pixels of all the images of one request together (from their headers, before decoding).
    max_request_megapixels: float = field(
        default=200.0, metadata=_rule(lambda v: v > 0, "must be > 0"))


@dataclass(frozen=True)
class Params:
    lr: float = field(metadata=_pos)  # Adam learning rate (paper: 2e-6); top level for `-S lr=`
    data: DataParams
    # binary: NORMAL vs PNEUMONIA (the paper); three_class: normal / bacteria / virus (softmax),
    # P(PNEUMONIA) = P(bacteria) + P(virus). Top level for `dvc exp run -S task=three_class`.
    task: Literal["binary", "three_class"] = "binary"
    ingest: IngestParams = IngestParams()
    validate: ValidateParams = ValidateParams()
    balance: BalanceParams = BalanceParams()
    split: SplitParams = SplitParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    ablation: AblationParams = AblationParams()
    recipe: RecipeParams = RecipeParams()
    serve: ServeParams = ServeParams()


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping (as read from params.yaml) into `Params`."""
    params = build_dataclass(Params, raw)
    _check_cross_field(params)
    return params


def _check_cross_field(p: Params) -> None:
    # Matched as pneumonia/dataset/folders.fold matches them: NFKC, then case-folded.
    normal = {unicodedata.normalize("NFKC", n).strip().casefold() for n in p.data.normal_folders}
    pneumonia = {unicodedata.normalize("NFKC", n).strip().casefold()
                 for n in p.data.pneumonia_folders}
    if "" in normal | pneumonia or normal & pneumonia:
        raise ParamsError(
            "params.yaml: `data.normal_folders` and `data.pneumonia_folders` must be non-empty "
            f"names and share none (case-insensitive); they are {sorted(normal)} and "
            f"{sorted(pneumonia)}. " + fix_hint("data.pneumonia_folders", "[pneumonia]")
        )
    if p.balance.zoom_min > p.balance.zoom_max:
        raise ParamsError(
            f"params.yaml: `balance.zoom_min` ({p.balance.zoom_min}) is larger than "
            f"`balance.zoom_max` ({p.balance.zoom_max}). Make zoom_min <= zoom_max."
        )
    w = p.model.weights
    if p.model.backbone == "small_cnn" and w != "none":
        raise ParamsError(
            f"params.yaml: `model.backbone: small_cnn` has no pretrained weights, but "
            f"`model.weights` is {w!r}. Set `model.weights: none` (-S model.weights=none)."
        )
    if p.train.lr_schedule == "cosine" and p.train.warmup_epochs >= p.train.epochs:
        raise ParamsError(
            f"params.yaml: `train.warmup_epochs` ({p.train.warmup_epochs}) must be smaller than "
            f"`train.epochs` ({p.train.epochs}) with `train.lr_schedule: cosine`."
        )
    if w not in ("imagenet", "none") and not Path(w).is_file():
        raise ParamsError(
            f"params.yaml: `model.weights` is {w!r}, which is neither `imagenet`, `none` nor an "
            "existing weights file. Give the path to a Keras weights file (e.g. "
            "~/.keras/models/densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5), or use "
            "`imagenet` (downloaded by Keras) or `none` (random initialisation)."
        )


def arm_of(params: Params) -> str:
    """The ablation arm a run belongs to: backbone, balancing method, BatchNorm handling
    (MLflow tag `arm`; `pneumonia report` groups experiments by it)."""
    bn = "bn-frozen" if params.model.freeze_batchnorm else "bn-trained"
    return f"{params.model.backbone}/{params.balance.method}/{bn}"


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


def training_params(p: Params) -> dict[str, Any]:
    """The dotted params a training run logs to MLflow (and the paper's reference run carries):
    all but evaluate.* (logged by the evaluate stage: they may change without retraining) and
    the grids' own settings, ablation.* and recipe.*."""
    return {k: v for k, v in flatten(p).items()
            if not k.startswith(("evaluate.", "ablation.", "recipe."))}


# The params the train stage depends on (dvc.yaml's train `params:`; tests/test_params.py
# checks the two agree): DVC re-runs training when one of them changes, so evaluate may expect
# them unchanged since the train stage read them.
TRAIN_STAGE_PARAMS = ("lr", "data.raw", "data.image_size", "balance.method", "model", "task",
                      "train")


def params_digest(p: Params) -> str:
    """sha256 of the train stage's params (TRAIN_STAGE_PARAMS): what the train stage records in
    models/mlflow_run.json and evaluate checks against the params.yaml it reads, so a
    params.yaml changed mid-pipeline (a second `dvc exp run` in the same workspace) is caught
    before a model is registered under the wrong experiment."""
    import hashlib

    read = {k: v for k, v in flatten(p).items()
            if any(k == s or k.startswith(s + ".") for s in TRAIN_STAGE_PARAMS)}
    text = json.dumps(read, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


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




