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

import logging
from typing import Any

from pneumonia.errors import PipelineError
from pneumonia.params import load_params
from pneumonia.site.quantiles import min_images

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.05


def default_alpha() -> float:
    try:
        return float(load_params().evaluate.conformal_alpha)
    except (PipelineError, OSError, AttributeError):
        return DEFAULT_ALPHA


def check_size(counts: dict[str, int], alpha: float, method: str, delta: float | None) -> None:
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
