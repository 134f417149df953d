"""`pneumonia site check IMAGES`: are these images like the ones the model was calibrated on?

No labels needed. Two answers:

- **Shift test**: a two-sample test on the model's penultimate-layer embeddings (the input of
  its last Dense layer, `pneumonia`) of IMAGES against the reference images (the validation
  originals of the model's training data: `--reference DIR` with DIR/split.csv and its images,
  default the workspace's data/). Statistic: the squared maximum mean discrepancy (MMD, Gretton
  et al. 2012; biased V-statistic) with Gaussian kernels at several bandwidths around the median
  pairwise distance of the pooled embeddings, aggregated (`mmd_test`); p-value: permutation
  test over whole patients (`--permutations`, +1 smoothed). Each sample is capped at
  ``--max-images`` (a random subset) to bound the kernel matrices.
- **Prevalence**: the share of pneumonia among IMAGES estimated without labels by Saerens et
  al.'s EM (2002): the model's P(PNEUMONIA) is re-weighted from the training prior
  (``--train-prevalence``: 0.5, our reading for a model trained on Augmentor-balanced classes)
  to the prior that the site's own predictions imply, iterated to a fixed point; 95 % interval
  from a bootstrap over images. It assumes label shift only (P(image | class) unchanged), which
  a scanner or resolution change breaks: read it as an estimate, not a count.

Hand-written, not a library: scipy and scikit-learn have no kernel two-sample test or EM
prior adjustment; both are a few lines of numpy here.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.dataset.kermany import parse_name
from pneumonia.errors import PipelineError
from pneumonia.files import read_csv_checked
from pneumonia.inference import ensemble, loading
from pneumonia.inference.sources import expand, params_max_megapixels, to_input
from pneumonia.model.tasks import pneumonia_probability
from pneumonia.site import registry, rundata
from pneumonia.stats.bootstrap import group_codes

MIN_IMAGES = 20  # the least `site check` tests (its permutation p-value needs a sample to move)


def embedding_model(model: Any) -> Any:
    """The model up to its penultimate layer: the input of the `pneumonia` head (for an
    ensemble, its members' side by side: pneumonia.inference.ensemble.embedding)."""
    import keras

    if ensemble.is_ensemble(model):
        return ensemble.embedding(model)
    return keras.Model(model.inputs, model.get_layer("pneumonia").input)


# One embedding model per model, kept while the model lives: a new one per call retraced
# Keras' predict function each time (TensorFlow's "triggered tf.function retracing" warning on
# every `site check`). It shares the model's layers, so AdaBN's updates reach it.
_EMBEDDERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def embed(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    sub = _EMBEDDERS.get(model)
    if sub is None:
        sub = _EMBEDDERS[model] = embedding_model(model)
    return np.concatenate([np.asarray(sub.predict_on_batch(x[i:i + batch]), dtype=np.float64)
                           for i in range(0, len(x), batch)])


# Squared bandwidths in units of the median squared distance of the pooled embeddings. Chosen
# on validation images with pneumonia.evaluation.robustness's shifts applied (docs/new-site.md,
# "Which bandwidths"): narrow kernels found gamma, contrast, noise and rotation shifts that the
# median heuristic (1) alone missed; wider ones (2, 4) found nothing the others did not.
SCALES = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


def mmd_test(a: np.ndarray, b: np.ndarray, permutations: int = 1000, seed: int = 0,
             groups_a: np.ndarray | None = None, groups_b: np.ndarray | None = None,
             scales: tuple[float, ...] = SCALES) -> tuple[float, float]:
    """(MMD^2 at the median-heuristic bandwidth, permutation p-value) of samples a (n, d) and
    b (m, d).

    One Gaussian kernel exp(-d^2 / (s * median d^2)) per scale s; with several scales the test
    is aggregated (MMDAgg, Schrab et al. 2023): each scale's MMD^2 gets its p-value within its
    own permutation distribution, the statistic is the smallest of them, and its p-value is
    read off the same permutations' smallest p-values, so the level holds without a
    Bonferroni penalty. Why several: one bandwidth fits one kind of shift; the median heuristic
    alone (scale 1) missed shifts that narrower kernels find (metrics/site-check.md).

    With patient ids (`groups_a`, `groups_b`: one per row; None = each row its own patient) the
    permutations move whole patients between the samples, keeping the number of patients on each
    side: a patient's images are alike, so permuting them one by one (as if independent) makes
    the null distribution too narrow and the test too ready to reject (measured in
    metrics/site-check.md). Ids are only compared within one sample.

    Hand-written: scipy, scikit-learn and the MMD packages on PyPI (hyppo, mmdagg) permute
    single rows, not groups of rows.
    """
    stat, p, _ = mmd_pvalues(a, b, permutations, seed, groups_a, groups_b, scales)
    return stat, p


def mmd_pvalues(a: np.ndarray, b: np.ndarray, permutations: int, seed: int,
                groups_a: np.ndarray | None, groups_b: np.ndarray | None,
                scales: tuple[float, ...], aggregate: tuple[float, ...] | None = None
                ) -> tuple[float, float, dict[float, float]]:
    """`mmd_test` with each scale's own p-value as well: (MMD^2 at the median bandwidth, the
    p-value aggregated over the scales in `aggregate` (None: all), {scale: p}), every scale on
    the same permutations (check-study compares single bandwidths with the aggregate)."""
    z = np.concatenate([a, b])
    sq = (z * z).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off = d2[np.triu_indices_from(d2, k=1)]
    median2 = float(np.median(off[off > 0])) if (off > 0).any() else 1.0
    kernels = [np.exp(-d2 / (median2 * s)) for s in scales]
    n, m = len(a), len(b)
    codes_a = group_codes(groups_a, n)
    codes_b = group_codes(groups_b, m) + (int(codes_a.max()) + 1 if n else 0)
    codes = np.concatenate([codes_a, codes_b])
    n_groups, groups_on_a = int(codes.max()) + 1, int(codes_a.max()) + 1

    s0 = np.r_[np.full(n, 1.0 / n), np.full(m, -1.0 / m)]  # MMD^2 = s' K s
    stats = np.empty((len(scales), permutations + 1))  # column 0: the observed samples
    stats[:, 0] = [s0 @ k @ s0 for k in kernels]
    rng = np.random.default_rng(seed)
    for start in range(0, permutations, 200):
        count = min(200, permutations - start)
        # each column: a random set of `groups_on_a` patients goes to side a
        on_a = (rng.random((n_groups, count)).argsort(axis=0) < groups_on_a)[codes]
        size_a = on_a.sum(axis=0)
        s = np.where(on_a, 1.0 / size_a, -1.0 / (n + m - size_a))
        for j, k in enumerate(kernels):
            stats[j, 1 + start:1 + start + count] = ((k @ s) * s).sum(axis=0)
    # p of every column within its scale's distribution (+1 smoothed: the observed counts)
    total = permutations + 1
    p_each = np.stack([(total - np.searchsorted(np.sort(row), row - 1e-12, side="left")) / total
                       for row in stats])
    chosen = [j for j, s in enumerate(scales) if aggregate is None or s in aggregate]
    smallest = p_each[chosen].min(axis=0)
    p = float((smallest <= smallest[0] + 1e-12).sum() / total)
    stat = float(s0 @ np.exp(-d2 / median2) @ s0)
    return stat, p, {float(s): float(p_each[j, 0]) for j, s in enumerate(scales)}


def em_prevalence(prob: np.ndarray, train_prevalence: float = 0.5, tol: float = 1e-8,
                  max_iter: int = 1000) -> float:
    """Saerens et al. (2002): the class prior of the new images from P(PNEUMONIA) of a model
    trained at `train_prevalence`."""
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-9, 1 - 1e-9)
    pi_t = train_prevalence
    pi = float(p.mean())
    for _ in range(max_iter):
        w1, w0 = pi / pi_t * p, (1 - pi) / (1 - pi_t) * (1 - p)
        new = float(np.mean(w1 / (w1 + w0)))
        if abs(new - pi) < tol:
            return new
        pi = new
    return pi


def prevalence_interval(prob: np.ndarray, train_prevalence: float, resamples: int = 500,
                        seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    p = np.asarray(prob, dtype=np.float64)
    boots = [em_prevalence(p[rng.integers(0, p.size, p.size)], train_prevalence)
             for _ in range(resamples)]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return em_prevalence(p, train_prevalence), float(lo), float(hi)


def reference_images(ref: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The validation originals of DIR/split.csv (subset val, not generated by balance) and
    their patient ids."""
    val = rundata.originals(ref, "val")
    return rundata.images(ref, val, size), val["patient_id"].astype(str).to_numpy()


def site_patients(names: list[str], patients_csv: str | None) -> tuple[np.ndarray, str]:
    """(patient id of each image, where the ids came from): `--patients` CSV (columns file,
    patient_id; `file` a path as listed or its base name), else Kermany-style file names
    (person12_bacteria_3, IM-0011-0001), else each image its own patient ("none")."""
    if patients_csv:
        path = Path(patients_csv)
        if not path.is_file():
            raise PipelineError(f"--patients {patients_csv}: no such file")
        fix = "give a CSV with columns file,patient_id (one row per image)"
        table = read_csv_checked(path, f"--patients {patients_csv}", ("file", "patient_id"),
                                 dtype=str, damaged=fix, outdated=fix)
        given = dict(zip(table["file"].astype(str), table["patient_id"].astype(str), strict=True))
        ids, missing = [], []
        for name in names:
            key = name if name in given else Path(name.split(":")[-1]).name
            if key not in given:
                missing.append(name)
            ids.append(given.get(key, f"image:{name}"))
        if missing:
            raise PipelineError(f"--patients {patients_csv}: {len(missing)} image(s) not listed "
                                f"(e.g. {missing[0]}): add a row `file,patient_id` for each, "
                                "by path or base name.")
        return np.array(ids), f"--patients {patients_csv}"
    ids, parsed = [], 0
    for name in names:
        try:
            ids.append(parse_name(Path(name.split(":")[-1]).stem, "NORMAL")[1])
            parsed += 1
        except ValueError:
            ids.append(f"image:{name}")
    if parsed == len(names):
        return np.array(ids), "file names"
    return np.array([f"image:{n}" for n in names]), "none"


def read_site(items: list[Any], size: int, cap: float) -> tuple[np.ndarray, list[str], list[str]]:
    """(inputs, names of the readable images, one line per unreadable file)."""
    arrays, names, bad = [], [], []
    for item in items:
        try:
            arrays.append(to_input(item.read(), size, cap))
            names.append(item.name)
        except (OSError, ValueError) as exc:
            bad.append(f"  {item.name}: {exc}")
    return (np.stack(arrays) if arrays else np.zeros((0, size, size, 1), np.float32)), names, bad


def too_few(paths: list[str], readable: int, bad: list[str]) -> str:
    where = " ".join(paths)
    unreadable = (f" ({len(bad)} more could not be read:\n" + "\n".join(bad[:30])
                  + ("\n  ..." if len(bad) > 30 else "") + "\n)") if bad else ""
    return (f"{where}: {readable} readable image(s){unreadable}; site check needs at least "
            f"{MIN_IMAGES} to test for a shift, and detects the shifts measured in "
            "metrics/site-check.md only with about 100-200. Add images of the site (or fix the "
            "unreadable ones); nothing was tested.")


def run(paths: list[str], model_spec: str | None = None, reference: str = "data",
        permutations: int = 1000, max_images: int = 1000, train_prevalence: float = 0.5,
        patients: str | None = None, seed: int = 0) -> dict[str, Any]:
    """`site check`'s record of the images under `paths` (PipelineError when there are too few
    readable ones; the unreadable ones are listed under "unreadable")."""
    items = expand(paths)  # PipelineError for a missing path or a folder without images
    if len(items) < MIN_IMAGES:
        raise PipelineError(too_few(paths, len(items), []))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    base = registry.resolve_base(model_spec)
    model = loading._load_keras_file(base.keras_file)
    size = int(model.input_shape[1])
    x, names, bad = read_site(items, size, params_max_megapixels()[0])
    if len(x) < MIN_IMAGES:
        raise PipelineError(too_few(paths, len(x), bad))
    groups, patients_from = site_patients(names, patients)
    rng = np.random.default_rng(seed)
    ref, ref_groups = reference_images(Path(reference), size)
    xs = rng.permutation(len(x))[:max_images]
    rs = rng.permutation(len(ref))[:max_images]
    stat, p = mmd_test(embed(model, x[xs]), embed(model, ref[rs]), permutations, seed,
                       groups[xs], ref_groups[rs])
    prob = pneumonia_probability(np.asarray(model.predict(x, verbose=0)))
    prev, lo, hi = prevalence_interval(prob, train_prevalence, seed=seed)
    shifted = p < 0.01
    verdict = (f"differs from the model's validation images (MMD p = {p:.3g}): recalibrate "
               "before use (pneumonia site calibrate)" if shifted else
               f"no evidence that these images differ from the model's validation images "
               f"(MMD p = {p:.3g}; with {len(xs)} images; absence of evidence only)")
    if patients_from == "none":
        verdict += ("; patient ids unknown (each image counted as its own patient: a patient's "
                    "several images make the test too ready to say \"differs\" - give "
                    "--patients)")
    return {"images": len(x), "skipped": len(bad), "unreadable": [b.strip() for b in bad],
            "reference_images": len(ref), "patients": len(set(groups.tolist())),
            "patients_from": patients_from, "mmd2": stat, "p_value": p, "shifted": shifted,
            "verdict": verdict, "prevalence": prev, "prevalence_ci": [lo, hi],
            "train_prevalence": train_prevalence, "model": base.spec}
