"""The measurement commands of `pneumonia site`: `study`, `adapt-study` and `check-study` (their
options and runs, each writing OUT.json + OUT.md); pneumonia/commands/site.py dispatches to them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.errors import PipelineError
from pneumonia.files import write_json_and_markdown
from pneumonia.site import adapt_study, check_study, study


def add_adapt_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="trained runs: each holds models/model.keras")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="the runs' data: DIR/split.csv (subset train/val/test) and images")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 100],
                        help="unlabelled images to adapt on, besides the whole half")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="metrics/site-adapt")
    parser.add_argument("--reuse", metavar="FILE.json", default=None,
                        help="a previous output with the same settings: its runs are not "
                        "measured again (add seeds as they finish)")
    parser.add_argument("--family", default="runs", metavar="NAME",
                        help="the runs' recipe (e.g. cnn-ema, dn121-ema): one section of --out; "
                        "the other families already there are kept")
    parser.add_argument("--ensemble", action="store_true",
                        help="also measure the runs' probabilities averaged (one model), "
                        "unadapted and with every run adapted on the same half")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure test-time augmentation (pneumonia.inference.tta), "
                        "alone and on top of AdaBN")
    parser.add_argument("--class-balanced", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure class-balanced AdaBN (site adapt's default; "
                        "pneumonia.site.adapt.balanced_draw) against plain AdaBN")
    parser.add_argument("--tta-adabn", action=argparse.BooleanOptionalAction, default=True,
                        help="TTA on top of AdaBN too (--no-tta-adabn: TTA alone, ~2.5x less "
                        "work)")
    parser.add_argument("--lever-sites", nargs="+", choices=adapt_study.SITES,
                        default=list(adapt_study.SITES),
                        help="where TTA and the ensemble are measured: the shifted test set, "
                        "the unshifted validation control (default: both)")


def adapt_study_command(args: argparse.Namespace) -> int:
    out = adapt_study.run([Path(r) for r in args.runs], Path(args.data), splits=args.splits,
                          sizes=args.sizes, threshold=args.threshold, seed=args.seed,
                          out=Path(args.out), reuse=Path(args.reuse) if args.reuse else None,
                          family=args.family, tta=args.tta, ensemble=args.ensemble,
                          lever_sites=tuple(args.lever_sites), tta_adabn=args.tta_adabn,
                          balanced=args.class_balanced)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')} (family {args.family})")
    return 0


def add_check_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="trained runs: RUN_DIR/models/model.keras (results pooled)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="their training data: DIR/split.csv (train/val/test) and images")
    parser.add_argument("--repeats", type=int, default=20, help="per run")
    parser.add_argument("--shift-repeats", type=int, default=None,
                        help="test the shifts in this many of the repeats (default all)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--permutations", type=int, default=200,
                        help="per test at the sizes (p-values resolve to 1/(P+1))")
    parser.add_argument("--permutations-all", type=int, default=1000,
                        help="per test with every image (site check's default)")
    parser.add_argument("--max-images", type=int, default=1000,
                        help="cap per sample, as site check's --max-images")
    parser.add_argument("--shifts", default=None, metavar="A,B",
                        help="robustness shifts to measure (default all; none: '-')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-prevalence", type=float, default=0.5,
                        help="for the Saerens EM prevalence estimate (as site check)")
    parser.add_argument("--out", default="metrics/site-check")
    parser.add_argument("--reuse", metavar="FILE.json", default=None,
                        help="a previous output with the same settings: its draws are kept, "
                        "the prevalence estimates measured again")


def check_study_command(args: argparse.Namespace) -> int:
    settings = check_study.Settings(
        runs=list(args.runs), data=args.data, repeats=args.repeats,
        shift_repeats=args.shift_repeats, sizes=list(args.sizes),
        permutations=args.permutations, permutations_all=args.permutations_all,
        max_images=args.max_images, shifts=args.shifts, seed=args.seed, out=args.out,
        train_prevalence=args.train_prevalence)
    check_study.measure(settings, lambda line: print(line, file=sys.stderr, flush=True),
                        Path(args.reuse) if args.reuse else None)
    out = Path(args.out)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arm", action="append", default=None, metavar="NAME=GLOB",
                        help="test predictions (image_id, patient_id, actual, probability), "
                        "one CSV per seed (default: the recipe's committed cnn-ema and "
                        "dn121-ema runs)")
    parser.add_argument("--validation", action="append", default=[], metavar="NAME=GLOB",
                        help="the same runs' validation calibration, matched to the arm's CSVs "
                        "by the -sN in the path: their evaluate.json (`conformal_qhat`, "
                        "evaluate's quantile on the validation originals) or their validation "
                        "predictions as CSV")
    parser.add_argument("--k", type=int, nargs="+", default=list(study.DEFAULT_K),
                        help="labelled site images (default 25 50 100 200)")
    parser.add_argument("--splits", type=int, default=50, help="splits per k and seed")
    parser.add_argument("--rule", default="accuracy",
                        help="threshold rule fitted on the k images (default accuracy)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--validation-threshold", type=float, default=0.5,
                        help="the threshold the runs applied (evaluate.threshold; default 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="metrics/site", help="writes OUT.md and OUT.json")


def study_command(args: argparse.Namespace) -> int:
    from pneumonia.site import thresholds

    rule = thresholds.parse_rule(args.rule)
    arms = study.named_globs(args.arm or list(study.DEFAULT_ARMS), "--arm")
    vals = study.named_globs(args.validation, "--validation")
    if any(k < 4 for k in args.k) or args.splits < 2:
        raise PipelineError("--k values must be >= 4 and --splits >= 2")
    result: dict[str, Any] = {"protocol": {
        "k": args.k, "splits": args.splits, "rule": str(rule), "alpha": args.alpha,
        "validation_threshold": args.validation_threshold, "seed": args.seed,
        "arms": arms, "validation": vals}, "arms": {}}
    for name, files in arms.items():
        frames = {study.seed_of(f): study.read_predictions(f) for f in files}
        val_qhat = study.validation_qhats(vals.get(name, []), args.alpha)
        missing = [s for s in frames if s not in val_qhat]
        if val_qhat and missing:
            raise PipelineError(f"--validation {name}: no validation quantile for seed(s) "
                                f"{', '.join(missing)} of the arm")
        entries = [(name, frames, val_qhat, False)]
        if len(frames) > 1:
            first = next(iter(frames.values()))
            avg = first.copy()
            avg["probability"] = np.mean([f["probability"].to_numpy() for f in frames.values()],
                                         axis=0)
            ens_q = study.validation_qhats(vals.get(name, []), args.alpha, average=True) \
                if len(val_qhat) == len(frames) else {}
            entries.append((f"{name}, {len(frames)} seeds averaged", {"avg": avg}, ens_q, True))
        for arm, fr, vq, one in entries:
            res = study.run_arm(fr, vq, args.k, args.splits, rule, args.alpha,
                          args.validation_threshold, args.seed)
            result["arms"][arm] = {
                "seeds": list(fr), "validation_quantile": bool(vq),
                "awaits": [] if vq else [f"{name}: the validation predictions of seed(s) "
                                         + ", ".join(frames)
                                         + (" (the averaged model's validation quantile needs "
                                            "all of them)" if one else "")],
                "k": {str(k): {key: study.summarise(v, one) for key, v in d.items()}
                      for k, d in res.items()}}
    print("wrote {} and {}".format(*write_json_and_markdown(result, study.markdown(result),
                                                            Path(args.out))))
    return 0
