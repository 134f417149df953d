"""The pipeline's file layout and the dataset's vocabulary (labels, classes)."""

from __future__ import annotations

from pathlib import Path

# Every stage reads and writes these paths, relative to the repository root (the
# directory DVC runs the stage in). dvc.yaml declares the same paths as deps/outs.
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
CONFUSION_PNG = METRICS / "confusion.png"
ROC_CSV = METRICS / "roc.csv"
RELIABILITY_CSV = METRICS / "reliability.csv"  # reliability diagram (test set), a DVC plot
PR_CSV = METRICS / "pr.csv"  # precision-recall curve (test set), a DVC plot
PREDICTIONS_CSV = METRICS / "predictions.csv"  # one row per test image, in git
RISK_COVERAGE_CSV = METRICS / "risk_coverage.csv"  # conformal sets' selective risk, a DVC plot
REGISTRY_JSON = METRICS / "registry.json"  # evaluate: registered version, champion gate decision
GRADCAM_DIR = METRICS / "gradcam"  # evaluate: Grad-CAM overlays of test errors and correct cases
PREDICTIONS_VAL_CSV = METRICS / "predictions_val.csv"  # evaluate: the validation originals, in git

# What DVC shows (`dvc exp show`, `dvc metrics diff`): each stage's `metrics:` file holds only its
# HEADLINE, the values a person compares across runs (about 40 in all). The stage's complete
# record, every value it held before, is metrics/details/<same name> (in git: a DVC plot entry
# with cache: false; validate's, whose lists DVC's plot renderer cannot read, a cached out).
# pneumonia.files.write_metrics writes both. Keys are dotted paths into the record.
DETAILS = METRICS / "details"
EVALUATE_DETAILS = DETAILS / "evaluate.json"
SPLIT_DETAILS = DETAILS / "split.json"
TRAIN_DETAILS = DETAILS / "train.json"
VALIDATION_DETAILS = DETAILS / "validation.json"
HEADLINE: dict[str, tuple[str, ...]] = {
    # evaluate first in dvc.yaml, so `dvc exp show` starts here (pneumonia.evaluation.evaluate)
    "evaluate.json": (
        "accuracy", "accuracy_ci_low", "accuracy_ci_high",
        "roc_auc", "roc_auc_ci_low", "roc_auc_ci_high",
        "NORMAL_precision", "NORMAL_recall", "NORMAL_f1",
        "PNEUMONIA_precision", "PNEUMONIA_recall", "PNEUMONIA_f1",
        "table3_consistent", "gate_decision",
        "val_accuracy", "val_roc_auc", "val_loss", "threshold", "n_test",
    ),
    "train.json": ("best_val_loss", "best_val_accuracy", "epochs_run", "seconds"),
    "validation.json": ("success", "rows", "expectations_evaluated", "expectations_failed",
                        "duplicate_groups_within_split", "duplicate_groups_across_splits",
                        "patients_in_train_and_test"),
    "split.json": ("counts.train.total", "counts.val.total", "counts.test.total",
                   "patients_in_train_and_val"),
}

MODELS = Path("models")
MODEL_FILE = MODELS / "model.keras"
MLFLOW_RUN_FILE = MODELS / "mlflow_run.json"  # train -> evaluate: which MLflow run to continue

LABELS = ("NORMAL", "PNEUMONIA")  # index = model target: 0 = NORMAL, 1 = PNEUMONIA (paper Fig. 4)
CLASSES = ("normal", "bacteria", "virus")
UNSPECIFIED = "unspecified"  # `data.layout: folders`: a PNEUMONIA image whose cause is unrecorded
# Table I of the paper (= the Mendeley release of Kermany 2018, 5856 images): images per official
# split (the manifest's `split`: val/ counts as train) and label. validate checks it
# (validate.table1_counts); pneumonia.provenance calls a dataset with these counts the full one.
TABLE1 = {("train", "NORMAL"): 1349, ("train", "PNEUMONIA"): 3883,
          ("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390}
