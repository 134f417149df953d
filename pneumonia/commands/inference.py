"""`pneumonia predict` and `pneumonia explain`: their options, and each run on the library in
pneumonia/inference/ (predict.py; gradcam.py for the Grad-CAM overlays: one PNG per image, named
after the image, captioned with P(PNEUMONIA) and the label; a three-class model gets one overlay
per class, `<image>_<class>.png`, each captioned with that class's probability)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from pneumonia.errors import PipelineError
from pneumonia.inference import ensemble, predict
from pneumonia.inference.gradcam import safe_name, write_overlay
from pneumonia.inference.loading import load
from pneumonia.inference.sources import expand, params_max_megapixels, to_input
from pneumonia.paths import CLASSES, LABELS

EPILOG = (
    "Exit status: 0 = every image predicted; 1 = some files could not be read or decoded (each "
    "is listed on stderr with its reason, and in the output with an `error`; the others are "
    "still predicted); 2 = usage error (no such path, empty folder, unknown model or alias).")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: P(PNEUMONIA) averaged over 9 fixed small "
                        "views (rotations, zooms, shifts; never a flip), 9x the work. Off by "
                        "default: its accuracy gain on the shifted test set was within noise "
                        "(metrics/site-adapt.md); the threshold and prediction sets were "
                        "fitted without it")


def threshold_arg(text: str) -> float | str:
    """--threshold: a number, or `chosen` (the validation-chosen threshold)."""
    if text == "chosen":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor `chosen`") from None


def predict_command(args: argparse.Namespace) -> int:
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
          f"({cap_from})" + ("; test-time augmentation: 9 views" if args.tta else ""),
          file=sys.stderr)
    if loaded.warning:
        print(f"WARNING: {loaded.warning}", file=sys.stderr)
    if loaded.promotion:
        print(f"NOTE: this champion was {loaded.promotion}", file=sys.stderr)
    with tqdm(total=len(items), unit="img", file=sys.stderr,
              disable=True if len(items) <= args.batch_size else None) as bar:
        results = list(predict.predict_items(loaded.model, items, loaded.size, args.batch_size,
                                             args.workers, bar, cap, tta=args.tta))
    three_class = int(loaded.model.output_shape[-1]) > 1
    rows = predict.result_rows(results, loaded.threshold, three_class, loaded.qhat, loaded.site)
    meta = {"model": loaded.source, "threshold": loaded.threshold,
            "threshold_from": loaded.threshold_from, "provenance": loaded.provenance,
            "warning": loaded.warning, "promoted_by_hand": loaded.promotion,
            "tta": bool(args.tta)}
    if loaded.qhat is not None:
        meta["conformal"] = {"qhat": loaded.qhat, "from": loaded.qhat_from}
    if loaded.site:
        meta["site_calibration"] = loaded.site
    predict.write_output(rows, args.out, meta)
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


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Exit status: 0 = an overlay for every image; 1 = some files could not be "
                     "read or decoded (listed); 2 = usage error.")
    parser.add_argument("paths", nargs="+", metavar="IMAGE",
                        help="image files (PNG, JPEG, DICOM), folders or .zip archives")
    parser.add_argument("--out", metavar="DIR", required=True, help="folder for the overlay PNGs")
    parser.add_argument("--model", metavar="M", default=None,
                        help="as for `pneumonia predict` (default: the champion, else "
                        "models/model.keras)")


def explain_command(args: argparse.Namespace) -> int:
    items = expand(args.paths)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    loaded = load(args.model)
    cap, _ = params_max_megapixels()
    if loaded.warning:
        print(f"WARNING: {loaded.warning}", file=sys.stderr)
    cam_model = ensemble.cam_model(loaded.model)
    out = Path(args.out)
    failed = 0
    used: set[str] = set()
    for item in items:
        try:
            x = to_input(item.read(), loaded.size, cap)
        except ValueError as exc:
            print(f"  {item.name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        name = safe_name(Path(item.name.replace(":", "/")).stem)
        while name in used:
            name += "_"
        used.add(name)
        scale = max(1, 224 // loaded.size)
        if cam_model.softmax_head:  # one heatmap per class
            class_probs = np.asarray(loaded.model.predict_on_batch(x[None]))[0]
            for k, cls in enumerate(CLASSES):
                cams, probs = cam_model(x[None], k)
                write_overlay(x[..., 0].astype(np.uint8), cams[0], out / f"{name}_{cls}.png",
                              f"{cls} P={class_probs[k]:.3f}", scale=scale)
            print(f"{item.name} -> {out / name}_<class>.png (P(PNEUMONIA) {probs[0]:.3f}; "
                  + ", ".join(f"{c} {p:.3f}" for c, p in zip(CLASSES, class_probs, strict=True))
                  + ")")
            continue
        cams, probs = cam_model(x[None])
        label = "PNEUMONIA" if probs[0] >= loaded.threshold else "NORMAL"
        write_overlay(x[..., 0].astype(np.uint8), cams[0], out / f"{name}.png",
                      f"P={probs[0]:.3f} {label}", scale=scale)
        print(f"{item.name} -> {out / (name + '.png')} (P(PNEUMONIA) {probs[0]:.3f})")
    if failed:
        print(f"{failed} file(s) skipped", file=sys.stderr)
        return 1
    return 0


def add_ensemble_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="the members: .keras files (each seed's models/model.keras), "
                        "runs:/<run_id>/model or models:/NAME@ALIAS")
    parser.add_argument("--out", metavar="FILE.keras", required=True,
                        help="where to write the ensemble (one Keras model)")
    parser.add_argument("--replace", action="store_true", help="overwrite --out if it exists")


def ensemble_command(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    record = ensemble.save(list(args.models), Path(args.out), replace=args.replace)
    print(f"{args.out}: the mean of {len(record['members'])} models (sha256 "
          f"{record['sha256'][:12]}; members and their sha256 in {record['record']}). Use it as "
          f"any model: pneumonia predict --model {args.out} ...; pneumonia site calibrate "
          f"LABELLED --site NAME --model {args.out} registers it with the site's calibration "
          "(docs/new-site.md).")
    return 0
