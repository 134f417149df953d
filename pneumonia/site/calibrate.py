"""`pneumonia site calibrate LABELLED --site NAME`: recalibrate the model for a site.

In order, each step before anything is written, so that bad input registers nothing:

1. the site name is checked, and an existing ``site-NAME`` refused unless ``--replace``;
2. the labelled set is read (pneumonia.site.labelled: any ingest layout; every unreadable file
   listed; both classes needed) and checked against the training data (byte-identical files);
3. the set must be large enough for alpha (and delta): pneumonia.site.quantiles.min_images, per
   class with ``--conformal mondrian``;
4. the base model (``--model``, default the champion) scores the images; the temperature
   (``--temperature``), the threshold (``--threshold-rule``) and the conformal quantiles are
   fitted on them (pneumonia.site.fit), with a patient-fold cross-fitted estimate;
5. the same weights are registered as a new version with alias ``site-NAME``
   (pneumonia.site.registry); ``--dry-run`` stops before this step.

The report (stdout, and ``--out FILE.json``) gives the fitted values and the estimate.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pneumonia.errors import PipelineError

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
                        help="accuracy, youden (default) or sensitivity:S (e.g. 0.95)")
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


def default_alpha() -> float:
    try:
        from pneumonia.params import load_params

        return float(load_params().evaluate.conformal_alpha)
    except (PipelineError, OSError, AttributeError):
        return DEFAULT_ALPHA


def check_size(counts: dict[str, int], alpha: float, method: str, delta: float | None) -> None:
    from pneumonia.site.quantiles import min_images

    need = min_images(alpha, delta)
    what = f"alpha {alpha:g}" + (f", delta {delta:g}" if delta is not None else "")
    total = sum(counts.values())
    if method == "mondrian":
        short = {k: n for k, n in counts.items() if n < need}
        if short:
            raise PipelineError(
                f"too few labelled images for class-conditional sets at {what}: each class "
                f"needs at least {need} (have " + ", ".join(f"{n} {k}" for k, n in
                                                            counts.items())
                + "). Label more images of " + " and ".join(short) + ", or raise --alpha, or "
                "use --conformal lac. Nothing was registered.")
    elif total < need:
        raise PipelineError(
            f"too few labelled images at {what}: conformal sets need at least {need} (have "
            f"{total}); with fewer, every set would hold both labels. Label more images or "
            "raise --alpha. Nothing was registered.")


def command(args: argparse.Namespace) -> int:
    from pneumonia.site import names, thresholds

    t0 = time.perf_counter()
    site = names.check(args.site)
    rule = thresholds.parse_rule(args.threshold_rule)
    alpha = default_alpha() if args.alpha is None else args.alpha
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
    check_size(counts, alpha, args.conformal, args.delta)
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
    print(summary(report), file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def summary(r: dict[str, Any]) -> str:
    cf = r.get("cross_fit") or {}
    est = ("estimate on this site's images (patient folds, each decided by a calibration "
           f"fitted on the others): accuracy {cf['accuracy']:.3f}, sensitivity "
           f"{cf['sensitivity']:.3f}, specificity {cf['specificity']:.3f}, coverage "
           f"{cf['coverage']:.3f} (NORMAL {cf['coverage_NORMAL']:.3f}, PNEUMONIA "
           f"{cf['coverage_PNEUMONIA']:.3f}), referral {cf['referral_rate']:.3f}"
           if cf else "no cross-fitted estimate (too few patients of a class)")
    where = (f"registered {r['registered_model']!r} version {r['version']} as {r['alias']}"
             if r.get("version") is not None else "dry run: nothing registered")
    return (f"{r['calibration']}\nthreshold {r['threshold']:.4g}, qhat NORMAL "
            f"{r['qhat'][0]:.4g} / PNEUMONIA {r['qhat'][1]:.4g}"
            + (f", temperature {r['temperature']:.3g}" if r.get("temperature") else "")
            + f"\n{est}\n{where} ({r['seconds']} s)")
