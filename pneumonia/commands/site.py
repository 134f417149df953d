"""`pneumonia site ...` (docs/new-site.md): the dispatch to every subcommand, and the options and
runs of `calibrate`, `adapt` and `check` on the library in pneumonia/site/ (the measurement
commands: pneumonia/commands/site_studies.py)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.commands.site_studies import (
    adapt_study_command,
    add_adapt_study_arguments,
    add_check_study_arguments,
    add_study_arguments,
    check_study_command,
    study_command,
)
from pneumonia.errors import PipelineError
from pneumonia.site import adapt, calibrate, check


def add_adapt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="IMAGES",
                        help="the site's unlabelled images: files, folders, .zip (as predict)")
    parser.add_argument("--site", required=True, metavar="NAME")
    parser.add_argument("--model", metavar="M", default=None,
                        help="the base model (default: the champion, else models/model.keras)")
    parser.add_argument("--replace", action="store_true",
                        help="re-adapt an existing site (its alias moves)")
    parser.add_argument("--dry-run", action="store_true", help="adapt, register nothing")
    parser.add_argument("--save", metavar="FILE.keras", default=None,
                        help="also save the adapted model to FILE.keras")
    parser.add_argument("--class-mix", choices=("training", "site"), default="training",
                        help="training (default): resample the images to the training prior's "
                        "class mix, as the unadapted model predicts it, before re-estimating "
                        "(class-balanced AdaBN); site: the images as they come (plain AdaBN, "
                        "which moves the operating point with the site's pneumonia share)")
    parser.add_argument("--train-prevalence", type=float, default=0.5,
                        help="pneumonia share the model was trained at (default 0.5: balanced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the class-balanced resample")


def adapt_command(args: argparse.Namespace) -> int:
    from pneumonia.inference.loading import mlflow_threshold, workspace_threshold
    from pneumonia.inference.sources import expand, params_max_megapixels, to_input
    from pneumonia.site import names, registry

    site = names.check(args.site)
    items = expand(args.paths)
    if len(items) < adapt.MIN_IMAGES:
        raise PipelineError(f"{len(items)} image(s): AdaBN needs at least {adapt.MIN_IMAGES} unlabelled "
                            "site images (batch statistics of fewer are noise). Nothing was "
                            "registered.")
    name, replaced, base, model = registry.open_base(args.model, site, args.replace,
                                                     args.dry_run)
    size = int(model.input_shape[1])
    cap = params_max_megapixels()[0]
    arrays, bad, digests = [], [], []
    for item in items:
        try:
            data = item.read()
            arrays.append(to_input(data, size, cap))
            digests.append(hashlib.sha256(data).hexdigest())
        except (OSError, ValueError) as exc:
            bad.append(f"  {item.name}: {exc}")
    if bad:
        raise PipelineError(f"{len(bad)} file(s) cannot be used (nothing was adapted or "
                            "registered):\n" + "\n".join(bad[:30]))
    if not 0 < args.train_prevalence < 1:
        raise PipelineError(f"--train-prevalence {args.train_prevalence:g}: give a share "
                            "strictly between 0 and 1 (0.5 for a model trained on balanced "
                            "classes). Nothing was registered.")
    recorded = (mlflow_threshold(base.spec) if base.spec.startswith(("runs:/", "models:/"))
                else workspace_threshold())
    threshold = recorded[0] if recorded else 0.5
    x = np.stack(arrays)
    mix = {"class_mix": args.class_mix}
    if args.class_mix == "training":
        from pneumonia.model.tasks import pneumonia_probability

        prob = pneumonia_probability(np.asarray(model.predict(x, verbose=0)))
        pick = adapt.balanced_draw(prob, threshold, args.train_prevalence,
                                   np.random.default_rng(args.seed))
        mix |= {"predicted_pneumonia_share": float(np.mean(prob >= threshold)),
                "train_prevalence": args.train_prevalence, "seed": args.seed}
        x = x[pick]
    n_layers = adapt.adapt_batchnorm(model, x)
    if n_layers == 0:
        raise PipelineError(f"{base.spec}: the model has no BatchNormalization layer; AdaBN "
                            "has nothing to adapt. Nothing was registered.")
    digest = hashlib.sha256("".join(sorted(d + "\n" for d in digests)).encode()).hexdigest()
    how = ("class-balanced AdaBN" if args.class_mix == "training" else "AdaBN")
    record = {"site": site, "calibration": (f"site-{site}: {how} on {len(arrays)} unlabelled "
                                            f"images (sha256 {digest[:12]}), threshold "
                                            f"{threshold:g} of the base model"),
              "adabn": {"images": len(arrays), "layers": n_layers, "images_sha256": digest,
                        **mix},
              "threshold": threshold, "temperature": None, "base_model": base.spec,
              "base_version": base.version}
    print(record["calibration"] + f"; {n_layers} BatchNorm layers re-estimated", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.save) if args.save else Path(tmp) / "model.keras"
        model.save(out)
        if args.dry_run:
            print("dry run: nothing registered", file=sys.stderr)
            return 0
        adapted = registry.Base(base.spec, out, base.version, base.provenance)
        tags = {"site.name": site, "site.adabn_images": str(len(arrays)),
                "site.adabn_class_mix": args.class_mix,
                "site.images_sha256": digest, "site.base_version": base.version or "",
                "site.base_model": base.spec[:500]}
        version, _ = registry.register(name, site, adapted, threshold, {}, record, tags)
    print(f"registered {name!r} version {version} as {names.alias(site)}"
          + (f" (was version {replaced})" if replaced else ""), file=sys.stderr)
    return 0


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("labelled", metavar="LABELLED",
                        help="the site's labelled images: a folder or .zip with NORMAL/ and "
                        "PNEUMONIA/ class folders at any depth, or the Kermany layout")
    parser.add_argument("--site", required=True, metavar="NAME",
                        help="the site's name (lower-case letters, digits, '-'): alias site-NAME")
    parser.add_argument("--model", metavar="M", default=None,
                        help="the base model (default: the registry's champion, else "
                        "models/model.keras)")
    parser.add_argument("--layout", default="auto", choices=("auto", "kermany", "folders"),
                        help="how LABELLED is laid out (default auto)")
    parser.add_argument("--metadata", default="", metavar="CSV",
                        help="folders layout: a CSV inside LABELLED with columns path, "
                        "patient_id (keeps each patient's images together)")
    parser.add_argument("--threshold-rule", default="youden", metavar="RULE",
                        help="accuracy, youden (default), logistic (Platt) or sensitivity:S "
                        "(e.g. 0.95)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="conformal miscoverage (default params.yaml "
                        "evaluate.conformal_alpha, else 0.05)")
    parser.add_argument("--conformal", default="lac", choices=("lac", "mondrian"),
                        help="lac: one quantile (coverage on average over images); mondrian: "
                        "one per class (coverage for each class)")
    parser.add_argument("--delta", type=float, default=None,
                        help="training-conditional: coverage >= 1 - alpha with probability "
                        ">= 1 - delta over calibration draws (needs more images)")
    parser.add_argument("--temperature", action="store_true",
                        help="also fit temperature scaling (reported probability only)")
    parser.add_argument("--training-manifest", default="data/manifest.csv", metavar="CSV",
                        help="the base model's training manifest, to refuse training images "
                        "(default data/manifest.csv; skipped with a warning when missing)")
    parser.add_argument("--replace", action="store_true",
                        help="recalibrate an existing site (its alias moves)")
    parser.add_argument("--dry-run", action="store_true",
                        help="fit and report, register nothing")
    parser.add_argument("--out", metavar="FILE.json", default=None,
                        help="also write the report as JSON")


def calibrate_command(args: argparse.Namespace) -> int:
    from pneumonia.site import names, thresholds

    t0 = time.perf_counter()
    site = names.check(args.site)
    rule = thresholds.parse_rule(args.threshold_rule)
    alpha = calibrate.default_alpha() if args.alpha is None else args.alpha
    if not 0 < alpha < 1:
        raise PipelineError(f"--alpha {alpha}: must be strictly between 0 and 1")
    if args.delta is not None and not 0 < args.delta < 1:
        raise PipelineError(f"--delta {args.delta}: must be strictly between 0 and 1")
    if args.out is not None and Path(args.out).suffix.lower() != ".json":
        raise PipelineError(f"--out {args.out}: give a .json file name")
    from pneumonia.site import registry

    name, replaced, base, model = registry.open_base(args.model, site, args.replace,
                                                     args.dry_run)
    size = int(model.input_shape[1])

    from pneumonia.inference.sources import params_max_megapixels
    from pneumonia.site import labelled as labelled_mod

    data = labelled_mod.read(args.labelled, size, args.layout, args.metadata,
                             params_max_megapixels()[0])
    counts = data.counts()
    calibrate.check_size(counts, alpha, args.conformal, args.delta)
    manifest = Path(args.training_manifest)
    overlap_checked = manifest.is_file()
    if overlap_checked:
        overlap = labelled_mod.training_overlap(data, manifest)
        if overlap:
            listed = "\n".join(f"  {f}" for f in overlap[:labelled_mod.MAX_LISTED])
            raise PipelineError(
                f"{len(overlap)} labelled image(s) are in the model's training data ({manifest}, "
                f"same bytes):\n{listed}\nThe model has seen them: they would calibrate it too "
                "optimistically. Remove them and run again. Nothing was registered.")
    else:
        print(f"WARNING: {manifest} not found: the labelled images were not checked against "
              "the training data (--training-manifest)", file=sys.stderr)

    from pneumonia.inference.pyfunc import predict_outputs
    from pneumonia.model.tasks import pneumonia_probability
    from pneumonia.site import fit

    prob = pneumonia_probability(predict_outputs(model, list(data.arrays)))
    settings = fit.Settings(rule, alpha, args.conformal, args.delta, args.temperature)
    cal = fit.fit(data.y, prob, data.groups, settings)
    digest = data.digest()
    record: dict[str, Any] = {
        "site": site,
        "calibration": (f"site-{site}: {rule} threshold, {args.conformal} alpha={alpha:g}"
                        + (f" delta={args.delta:g}" if args.delta is not None else "")
                        + (", temperature" if args.temperature else "")
                        + f", {counts['NORMAL']}+{counts['PNEUMONIA']} labelled images "
                        f"(sha256 {digest[:12]})"),
        **cal.as_dict(),
        "labelled_sha256": digest, "labelled_source": str(args.labelled),
        "layout": data.layout, "patients_from": data.patients_from,
        "patients": len(set(data.groups)),
        "training_overlap_checked": overlap_checked,
        "base_model": base.spec, "base_version": base.version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    conformal = {"alpha": alpha, "qhat": max(cal.qhat), "qhat_per_class": list(cal.qhat),
                 "n_calibration": int(sum(cal.n)), "method": args.conformal,
                 "delta": args.delta}
    tags = {"site.name": site, "site.rule": str(rule), "site.alpha": f"{alpha:g}",
            "site.delta": "" if args.delta is None else f"{args.delta:g}",
            "site.conformal": args.conformal,
            "site.temperature": "" if cal.temperature is None else f"{cal.temperature:.6g}",
            "site.n_normal": str(counts["NORMAL"]), "site.n_pneumonia": str(counts["PNEUMONIA"]),
            "site.labelled_sha256": digest, "site.base_version": base.version or "",
            "site.base_model": base.spec[:500]}
    report: dict[str, Any] = {"registered_model": name, "alias": names.alias(site),
                              "version": None, "replaced_version": replaced, **record}
    if not args.dry_run:
        version, run_id = registry.register(name, site, base, cal.threshold, conformal, record,
                                            tags)
        report |= {"version": int(version), "run_id": run_id}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(calibrate.summary(report), file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="IMAGES",
                        help="the site's images: files, folders, .zip (as predict)")
    parser.add_argument("--model", metavar="M", default=None,
                        help="default: the champion, else models/model.keras")
    parser.add_argument("--reference", default="data", metavar="DIR",
                        help="the model's training data: DIR/split.csv and its images "
                        "(default data/, the workspace's)")
    parser.add_argument("--permutations", type=int, default=1000,
                        help="permutations of whole patients (default 1000; the test aggregates "
                        "5 bandwidths and needs a few hundred to resolve p < 0.01)")
    parser.add_argument("--max-images", type=int, default=1000,
                        help="at most this many images per sample (a random subset)")
    parser.add_argument("--train-prevalence", type=float, default=0.5,
                        help="pneumonia share the model was trained at (default 0.5: balanced)")
    parser.add_argument("--patients", metavar="FILE.csv", default=None,
                        help="columns file, patient_id: keeps a patient's images together in "
                        "the test (default: Kermany-style file names, else one patient each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", metavar="FILE.json", default=None)


def check_command(args: argparse.Namespace) -> int:
    doc = check.run(args.paths, args.model, args.reference, args.permutations, args.max_images,
                    args.train_prevalence, args.patients, args.seed)
    if doc["unreadable"]:
        print(f"{doc['skipped']} file(s) could not be read and were left out of the test:\n"
              + "\n".join(f"  {b}" for b in doc["unreadable"]), file=sys.stderr)
    lo, hi = doc["prevalence_ci"]
    print(doc["verdict"] + f"\nestimated pneumonia prevalence {doc['prevalence']:.3f} "
          f"[{lo:.3f}, {hi:.3f}] (Saerens EM, label shift assumed)")
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 1 if doc["unreadable"] else 0


SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                               Callable[[argparse.Namespace], int], str]] = {
    "check": (add_check_arguments, check_command,
              ("no labels: do these images differ from the model's validation images (MMD on "
              "embeddings, permutation p), and their pneumonia prevalence (Saerens EM)")),
    "check-study": (add_check_study_arguments, check_study_command,
                    ("measure site check: false alarms on held-out validation images, power on "
                    "the test set (metrics/site-check.md)")),
    "calibrate": (add_calibrate_arguments, calibrate_command,
                  ("fit the threshold and conformal sets on a site's labelled images; register "
                  "the same weights as alias site-NAME")),
    "study": (add_study_arguments, study_command,
              ("the official test set as a new site: k labelled images calibrate, the rest are "
              "scored, repeated patient-grouped splits (metrics/site.md)")),
    "adapt": (add_adapt_arguments, adapt_command,
              ("AdaBN: re-estimate BatchNorm statistics on a site's unlabelled images; register "
              "the adapted weights as alias site-NAME")),
    "adapt-study": (add_adapt_study_arguments, adapt_study_command,
                    ("measure AdaBN and test-time augmentation on trained runs: adapt on half of "
                    "the test set, score the rest; control on validation images "
                    "(metrics/site-adapt.md)")),
}


def add_site_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="site_command", required=True, metavar="COMMAND")
    for name, (add, _, text) in SUBCOMMANDS.items():
        add(sub.add_parser(name, help=text, description=text))


def site_command(args: argparse.Namespace) -> int:
    return SUBCOMMANDS[args.site_command][1](args)
