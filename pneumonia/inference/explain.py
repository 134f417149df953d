"""`pneumonia explain IMAGE... --out DIR`: Grad-CAM overlays (pneumonia.inference.gradcam), one
PNG per image, named after the image, captioned with P(PNEUMONIA) and the label. A three-class
model gets one overlay per class, `<image>_<class>.png` (normal, bacteria, virus), each captioned
with that class's probability."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from pneumonia.inference.gradcam import CamModel, safe_name, write_overlay
from pneumonia.inference.loading import load
from pneumonia.inference.sources import expand, params_max_megapixels, to_input
from pneumonia.paths import CLASSES


# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Exit status: 0 = an overlay for every image; 1 = some files could not be "
                     "read or decoded (listed); 2 = usage error.")
    parser.add_argument("paths", nargs="+", metavar="IMAGE",
                        help="image files (PNG, JPEG, DICOM), folders or .zip archives")
    parser.add_argument("--out", metavar="DIR", required=True, help="folder for the overlay PNGs")
    parser.add_argument("--model", metavar="M", default=None,
                        help="as for `pneumonia predict` (default: the champion, else "
                        "models/model.keras)")


def command(args: argparse.Namespace) -> int:
    items = expand(args.paths)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    loaded = load(args.model)
    cap, _ = params_max_megapixels()
    if loaded.warning:
        print(f"WARNING: {loaded.warning}", file=sys.stderr)
    cam_model = CamModel(loaded.model)
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
