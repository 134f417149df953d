"""What AdaBN and test-time augmentation do, measured (`pneumonia site adapt-study RUN_DIR...
--data DIR --family NAME`; its options: pneumonia/commands/site.py).

For each trained run (RUN_DIR/models/model.keras) and each of ``--splits`` random patient-grouped
halves of the official test set: the BatchNorm statistics are re-estimated (pneumonia.site.adapt)
on n unlabelled images of one half (n in ``--sizes``, and the whole half), and the other half is
scored with the run's own threshold (``--threshold``, the runs' 0.5), against the same model
unadapted on the same images. The control: the same on the validation originals (an unshifted
site: halves of the images the model was calibrated on), where AdaBN should change nothing.

Reported per condition: accuracy, NORMAL recall, PNEUMONIA recall and ROC AUC, adapted and
unadapted, and their paired difference: mean over seeds x splits, with the 95 % t-interval over
seeds (each seed's mean over its splits); one seed: the 2.5-97.5 % range over splits.
Test-time augmentation (``--tta``, pneumonia.inference.tta), on halves of the same kind: alone
against the plain model, and on top of AdaBN (whole half) against the plain model and against
AdaBN alone.

Writes ``--out``.md/.json: one section per ``--family`` (the runs' recipe); a family already in
the file is kept, the one measured replaces its own. DIR: the data the runs were trained on
(split.csv, images/).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.evaluation.robustness import cpu_name as _cpu
from pneumonia.files import write_json_and_markdown
from pneumonia.site import draws
from pneumonia.site.adapt import adapt_batchnorm
from pneumonia.site.check import embed, mmd_test
from pneumonia.site.rundata import images as _images

METRICS = ("accuracy", "NORMAL_recall", "PNEUMONIA_recall", "roc_auc")
SITES = ("test", "validation")  # the shifted site and the unshifted control


def _scores(model: Any, x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(model.predict_on_batch(x[i:i + 256]), dtype=float)
                           .reshape(-1) for i in range(0, len(x), 256)])


def _metrics(y: np.ndarray, p: np.ndarray, t: float) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    pred = p >= t
    return {"accuracy": float(np.mean(pred == y)), "NORMAL_recall": float(np.mean(~pred[y == 0])),
            "PNEUMONIA_recall": float(np.mean(pred[y == 1])),
            "roc_auc": float(roc_auc_score(y, p))}


def _load(run: Path) -> tuple[Any, list[np.ndarray], int]:
    """(the run's Keras model, its weights to restore after each adaptation, its input size)."""
    import keras

    model = keras.saving.load_model(run / "models" / "model.keras", compile=False)
    return model, model.get_weights(), int(model.input_shape[1])


def measure_run(run: Path, data: Path, splits: int, sizes: list[int], threshold: float,
                seed: int) -> dict[str, list[dict[str, float]]]:
    """{condition: [per split {metric, base_metric}]} for one trained run."""
    model, weights, size = _load(run)
    split = pd.read_csv(data / "split.csv", dtype=str)
    sites = {"test": split[split["subset"] == "test"],
             "validation (control)": split[(split["subset"] == "val")
                                           & split["source_image_id"].isna()]}

    out: dict[str, list[dict[str, float]]] = {}
    xs = {site: _images(data, frame.reset_index(drop=True), size)
          for site, frame in sites.items()}
    emb_val = embed(model, xs["validation (control)"])
    for site, frame in sites.items():
        frame = frame.reset_index(drop=True)
        x = xs[site]
        y = (frame["label"] == "PNEUMONIA").to_numpy()
        base = _scores(model, x)
        emb = embed(model, x)
        rng = np.random.default_rng([seed, len(frame)])
        for _ in range(splits):
            half = draws.draw(frame["patient_id"].to_numpy(), len(frame), len(frame) // 2, rng)
            pool = np.flatnonzero(half)
            # the gated rule: adapt only when `site check` finds the adaptation half differs
            # from validation originals it does not contain (control: the other half)
            ref = emb_val[~half] if site.startswith("validation") else \
                emb_val[rng.permutation(len(emb_val))[:len(emb_val) // 2]]
            # the test as `site check` ran it when these rows were first measured (2026-12-06):
            # one bandwidth, image-wise permutations; kept so that reused and new runs agree
            # (docs/new-site.md says so). Today's check aggregates bandwidths over patients.
            _, p_check = mmd_test(emb[pool], ref, 200, int(rng.integers(1 << 30)), scales=(1.0,))
            for n in [*[s for s in sizes if s < pool.size], pool.size]:
                use = rng.choice(pool, n, replace=False)
                adapt_batchnorm(model, x[use])
                adapted = _scores(model, x[~half])
                model.set_weights(weights)
                row = _metrics(y[~half], adapted, threshold)
                row |= {f"base_{k}": v for k, v in
                        _metrics(y[~half], base[~half], threshold).items()}
                key = f"{site}, adapted on {'the whole half' if n == pool.size else n}"
                out.setdefault(key, []).append(row)
                if n == pool.size:  # the gated rule on the same split
                    gated = adapted if p_check < 0.01 else base[~half]
                    grow = _metrics(y[~half], gated, threshold)
                    grow |= {f"base_{k}": v for k, v in
                             _metrics(y[~half], base[~half], threshold).items()}
                    grow["adapted"] = float(p_check < 0.01)
                    out.setdefault(f"{site}, adapted on the whole half only when site check "
                                   "finds a shift (p < 0.01)", []).append(grow)
    return out


def _sites(split: pd.DataFrame, only: tuple[str, ...] = SITES) -> dict[str, pd.DataFrame]:
    frames = {"test": split[split["subset"] == "test"],
              "validation (control)": split[(split["subset"] == "val")
                                            & split["source_image_id"].isna()]}
    return {name: frame for name, frame in frames.items() if name.split()[0] in only}


def _site_arrays(data: Path, sites: tuple[str, ...], size: int
                 ) -> Iterator[tuple[str, pd.DataFrame, np.ndarray, np.ndarray]]:
    """Per site of split.csv: (site, its rows, its images at `size`, is-PNEUMONIA)."""
    split = pd.read_csv(data / "split.csv", dtype=str)
    for site, frame in _sites(split, sites).items():
        frame = frame.reset_index(drop=True)
        yield site, frame, _images(data, frame, size), (frame["label"] == "PNEUMONIA").to_numpy()


def measure_tta(run: Path, data: Path, splits: int, threshold: float, seed: int,
                sites: tuple[str, ...] = SITES, with_adabn: bool = True
                ) -> dict[str, list[dict[str, float]]]:
    """Test-time augmentation on one trained run: {condition: [per split rows]}, on the same kind
    of random patient-grouped halves as `measure_run` (its own draws): TTA alone against the
    plain model; with `with_adabn`, AdaBN on the whole half + TTA against the plain model and
    against AdaBN alone. `sites`: "test", "validation" (the control) or both."""
    from pneumonia.inference import tta

    model, weights, size = _load(run)
    out: dict[str, list[dict[str, float]]] = {}
    for site, frame, x, y in _site_arrays(data, sites, size):
        base = _scores(model, x)
        base_tta = tta.outputs(model, x).reshape(-1)
        rng = np.random.default_rng([seed, len(frame), 7])
        for _ in range(splits):
            half = draws.draw(frame["patient_id"].to_numpy(), len(frame), len(frame) // 2, rng)
            compared = [(f"{site}, TTA ({len(tta.VIEWS)} views), no adaptation",
                         base_tta[~half], base[~half])]
            if with_adabn:
                adapt_batchnorm(model, x[half])
                adapted = _scores(model, x[~half])
                adapted_tta = tta.outputs(model, x[~half]).reshape(-1)
                model.set_weights(weights)
                compared += [(f"{site}, AdaBN on the whole half + TTA", adapted_tta, base[~half]),
                             (f"{site}, TTA added to AdaBN (whole half)", adapted_tta, adapted)]
            for cond, lever, ref in compared:
                row = _metrics(y[~half], lever, threshold)
                row |= {f"base_{k}": v for k, v in _metrics(y[~half], ref, threshold).items()}
                out.setdefault(cond, []).append(row)
    return out


def measure_balanced(run: Path, data: Path, splits: int, threshold: float, seed: int,
                     sites: tuple[str, ...] = SITES, train_prevalence: float = 0.5
                     ) -> dict[str, list[dict[str, float]]]:
    """Class-balanced AdaBN (pneumonia.site.adapt.balanced_draw, `site adapt`'s default) on one
    trained run: {condition: [per split rows]}, on random patient-grouped halves (its own
    draws): the whole half resampled to the training prior's class mix as the unadapted model
    predicts it, then adapted; scored on the other half against the plain model and against
    plain AdaBN on the same half."""
    from pneumonia.site.adapt import balanced_draw

    model, weights, size = _load(run)
    out: dict[str, list[dict[str, float]]] = {}
    for site, frame, x, y in _site_arrays(data, sites, size):
        base = _scores(model, x)
        rng = np.random.default_rng([seed, len(frame), 13])
        for _ in range(splits):
            half = draws.draw(frame["patient_id"].to_numpy(), len(frame), len(frame) // 2, rng)
            pool = np.flatnonzero(half)
            adapt_batchnorm(model, x[pool])
            plain = _scores(model, x[~half])
            model.set_weights(weights)
            pick = pool[balanced_draw(base[pool], threshold, train_prevalence, rng)]
            adapt_batchnorm(model, x[pick])
            balanced = _scores(model, x[~half])
            model.set_weights(weights)
            for cond, lever, ref in (
                    (f"{site}, class-balanced AdaBN on the whole half", balanced, base[~half]),
                    (f"{site}, class-balanced AdaBN against plain AdaBN (whole half)", balanced,
                     plain)):
                row = _metrics(y[~half], lever, threshold)
                row |= {f"base_{k}": v for k, v in _metrics(y[~half], ref, threshold).items()}
                out.setdefault(cond, []).append(row)
    return out


def measure_ensemble(runs: list[Path], data: Path, splits: int, threshold: float,
                     seed: int, sites: tuple[str, ...] = SITES
                     ) -> dict[str, list[dict[str, float]]]:
    """The runs' probabilities averaged (a seed ensemble, one model): {condition: [per split]}.

    On random patient-grouped halves (the same draws as `measure_tta`): every run adapted on the
    same half, their scores on the other half averaged, against the ensemble unadapted; and the
    ensemble unadapted against the runs' mean unadapted accuracy (what averaging itself buys)."""
    import keras

    models = [keras.saving.load_model(r / "models" / "model.keras", compile=False) for r in runs]
    size = int(models[0].input_shape[1])
    out: dict[str, list[dict[str, float]]] = {}
    for site, frame, x, y in _site_arrays(data, sites, size):
        base = [_scores(m, x) for m in models]
        rng = np.random.default_rng([seed, len(frame), 7])
        for _ in range(splits):
            half = draws.draw(frame["patient_id"].to_numpy(), len(frame), len(frame) // 2, rng)
            adapted = []
            for m in models:
                weights = m.get_weights()
                adapt_batchnorm(m, x[half])
                adapted.append(_scores(m, x[~half]))
                m.set_weights(weights)
            plain = np.mean([b[~half] for b in base], axis=0)
            row = _metrics(y[~half], np.mean(adapted, axis=0), threshold)
            row |= {f"base_{k}": v for k, v in _metrics(y[~half], plain, threshold).items()}
            out.setdefault(f"{site}, {len(runs)} seeds averaged, AdaBN on the whole half",
                           []).append(row)
            row = _metrics(y[~half], plain, threshold)
            singles = [_metrics(y[~half], b[~half], threshold) for b in base]
            row |= {f"base_{k}": float(np.mean([s[k] for s in singles])) for k in METRICS}
            out.setdefault(f"{site}, {len(runs)} seeds averaged vs one seed (mean of the seeds)",
                           []).append(row)
    return out


# The two columns each condition compares (default: the model as trained, and AdaBN).
COLUMNS = {"class-balanced AdaBN against": ("AdaBN", "class-balanced AdaBN"),
           "class-balanced AdaBN on": ("unadapted", "class-balanced AdaBN"),
           "seeds averaged, AdaBN": ("averaged, unadapted", "averaged, AdaBN"),
           "seeds averaged vs": ("one seed", "seeds averaged"), "TTA (": ("plain", "TTA"), "+ TTA": ("unadapted", "AdaBN + TTA"),
           "TTA added": ("AdaBN", "AdaBN + TTA")}


def columns(condition: str) -> tuple[str, str]:
    return next((v for k, v in COLUMNS.items() if k in condition), ("unadapted", "AdaBN"))


def summarise(per_seed: list[np.ndarray]) -> dict[str, Any]:
    from scipy import stats

    seed_means = np.array([v.mean() for v in per_seed])
    allv = np.concatenate(per_seed)
    if seed_means.size >= 2:
        half = stats.t.ppf(0.975, seed_means.size - 1) * seed_means.std(ddof=1) \
            / np.sqrt(seed_means.size)
        lo, hi, over = seed_means.mean() - half, seed_means.mean() + half, "seeds"
    else:
        lo, hi = np.percentile(allv, [2.5, 97.5])
        over = "splits"
    return {"mean": float(allv.mean()), "low": float(lo), "high": float(hi), "over": over}


def run(runs: list[Path], data: Path, *, splits: int, sizes: list[int], threshold: float,
        seed: int, out: Path, reuse: Path | None, family: str, tta: bool,
        ensemble: bool, lever_sites: tuple[str, ...] = SITES, tta_adabn: bool = True,
        balanced: bool = True) -> Path:
    """Measure (or reuse) the runs, write `out`.json/.md with this family's section replaced;
    returns `out`."""
    if not (data / "split.csv").is_file():
        raise PipelineError(f"--data {data}: no split.csv there")
    for r in runs:
        if not (r / "models" / "model.keras").is_file():
            raise PipelineError(f"{r}: no models/model.keras")
    t0 = time.perf_counter()
    settings = {"splits": splits, "sizes": sizes, "threshold": threshold,
                "seed": seed, "data": str(data)}
    previous: dict[str, Any] = {}
    previous_doc: dict[str, Any] = {}
    if reuse and reuse.is_file():
        old = families(json.loads(reuse.read_text(encoding="utf-8"))).get(family, {})
        if {k: old.get(k) for k in settings} == settings:
            previous, previous_doc = old.get("per_run", {}), old
        else:
            print(f"--reuse {reuse}: no family {family!r} with these settings, measuring "
                  "every run", file=sys.stderr)
    results: dict[str, Any] = {}
    reused = []
    def has(conds: dict[str, Any], mark: str) -> bool:
        return any(mark in c for c in conds)

    for r in runs:
        old_rows = previous.get(r.name)
        if old_rows and (not tta or has(old_rows, "TTA")) and \
                (not balanced or has(old_rows, "class-balanced")):
            results[r.name] = old_rows
            reused.append(r.name)
            continue
        results[r.name] = old_rows or measure_run(r, data, splits, sizes, threshold, seed)
        if tta and not has(results[r.name], "TTA"):
            results[r.name] = results[r.name] | measure_tta(r, data, splits, threshold, seed,
                                                            lever_sites, tta_adabn)
        if balanced and not has(results[r.name], "class-balanced"):
            results[r.name] = results[r.name] | measure_balanced(r, data, splits, threshold,
                                                                 seed)
    conditions = list(dict.fromkeys(c for rows in results.values() for c in rows
                                    if all(c in other for other in results.values())))
    table: dict[str, dict[str, Any]] = {}
    averaged: dict[str, Any] = {}
    if previous_doc.get("ensemble_runs") == [r.name for r in runs]:
        averaged = previous_doc.get("ensemble") or {}
    measured_now = len(reused) < len(runs)
    if ensemble and not averaged and len(runs) > 1:
        averaged = measure_ensemble(runs, data, splits, threshold, seed, lever_sites)
        measured_now = True
    for cond in conditions:
        table[cond] = {}
        for m in METRICS:
            adapted = [np.array([row[m] for row in results[r][cond]]) for r in results]
            base = [np.array([row[f"base_{m}"] for row in results[r][cond]]) for r in results]
            table[cond][m] = {"adapted": summarise(adapted), "base": summarise(base),
                              "difference": summarise([a - b for a, b in
                                                       zip(adapted, base, strict=True)])}
    for cond, rows in averaged.items():
        table[cond] = {m: {key: summarise([np.array([row[f"{pre}{m}"] for row in rows])])
                           for key, pre in (("adapted", ""), ("base", "base_"))}
                       for m in METRICS}
        for m in METRICS:
            table[cond][m]["difference"] = summarise([np.array(
                [row[m] - row[f"base_{m}"] for row in rows])])
    doc = {"runs": [str(r) for r in runs], **settings, "tta": bool(tta),
           "class_balanced": bool(balanced),
           "lever_sites": list(lever_sites), "tta_adabn": bool(tta_adabn),
           "reused": sorted(reused),
           "measured": datetime.now(UTC).isoformat(timespec="minutes"),
           "machine": f"{platform.machine()}, {_cpu()}", "seconds": round(time.perf_counter()
                                                                          - t0, 1),
           "conditions": table, "per_run": results, "ensemble": averaged,
           "ensemble_runs": [r.name for r in runs] if averaged else [],
           # how earlier invocations measured what this one reuses (one line each)
           "history": previous_doc.get("history", [])}
    if not measured_now:  # nothing measured now: the file keeps when and how it was measured
        doc |= {k: previous_doc[k] for k in ("measured", "machine", "seconds", "reused")
                if k in previous_doc}
    existing = out.with_suffix(".json")
    every = families(json.loads(existing.read_text(encoding="utf-8"))) \
        if existing.is_file() else {}
    every[family] = doc
    write_json_and_markdown({"families": every}, markdown(every), out)
    return out


def families(doc: dict[str, Any]) -> dict[str, Any]:
    """{family: study} of an output file (one written before families existed: its runs were
    the cnn-ema seeds)."""
    return doc.get("families", {"cnn-ema": doc})


def _cell(s: dict[str, Any], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return (f"{f.format(s['mean'])} [{f.format(s['low'])}, {f.format(s['high'])}]")


def _sites_option(doc: dict[str, Any]) -> str:
    sites = doc.get("lever_sites", list(SITES))
    return "" if list(sites) == list(SITES) or not (doc.get("tta") or doc.get("ensemble")) \
        else " --lever-sites " + " ".join(sites)


def markdown(every: dict[str, Any]) -> str:
    lines = [("# AdaBN, class-balanced AdaBN and test-time augmentation at a new site: "
              "measured"), "",
             ("Each split: a random patient-grouped half of the site's images adapts the "
              "BatchNorm statistics (unlabelled), the other half is scored at the runs' threshold, "
              "with the lever and without it (paired). Data: the 64-px development copy the runs "
              "were trained on (5840 of its 5856 images are 224-px re-encodings, not the public "
              "download). Cells: mean over seeds x splits [95 % t-interval over seeds; one "
              "seed: the 2.5-97.5 % range over splits, a spread of halves, not an interval "
              "over seeds]. The validation rows are the control: an unshifted site (held-out "
              "validation originals the model was calibrated on), where a lever should change "
              "nothing. Class-balanced AdaBN: the adapting half first resampled to the "
              "training prior's class mix as the unadapted model predicts it "
              "(pneumonia.site.adapt.balanced_draw; no labels). "
              "TTA: the mean output over 9 fixed views (the image, rotations of "
              "+-5 degrees, zooms 0.95 / 1.05, shifts of +-5 % in x and in y; never a flip; "
              "pneumonia.inference.tta)."), ""]
    for family, doc in every.items():
        lines += [f"# {family}", "",
                  (f"Command: `pneumonia site adapt-study {' '.join(doc['runs'])} --data "
                   f"{doc['data']} --splits {doc['splits']} --family {family}"
                   f"{' --ensemble' if doc.get('ensemble') else ''}"
                   f"{'' if doc.get('tta') else ' --no-tta'}"
                   f"{'' if doc.get('class_balanced') else ' --no-class-balanced'}"
                   f"{'' if doc.get('tta_adabn', True) or not doc.get('tta') else ' --no-tta-adabn'}"
                   f"{_sites_option(doc)}` "
                   f"({doc['measured']} UTC, {doc['machine']}, {doc['seconds']:.0f} s). "
                   f"{len(doc['runs'])} trained model(s); threshold {doc['threshold']:g}.")
                  + (f" Runs {', '.join(doc['reused'])} were measured by an earlier invocation "
                     "with the same settings (`--reuse`); the time above is the others'."
                     if doc.get("reused") else ""), ""]
        lines += [f"- {h}" for h in doc.get("history", [])] + ([""] if doc.get("history")
                                                                else [])
        for cond, metrics in doc["conditions"].items():
            lines += [f"## {family}: {cond}", ""]
            shares = [row["adapted"] for rows in doc["per_run"].values()
                      for row in rows.get(cond, []) if "adapted" in row]
            if cond in doc.get("ensemble", {}):
                lines += [("One model (the seeds' probabilities averaged): the interval is the "
                           "2.5-97.5 % range over splits."), ""]
            if shares:
                lines += [(f"`site check` found a shift (and AdaBN was applied) in "
                          f"{sum(shares):.0f} of {len(shares)} splits."), ""]
            without, with_ = columns(cond)
            lines += [f"| metric | {without} | {with_} | difference |", "|---|---|---|---|"]
            for m, s in metrics.items():
                lines.append(f"| {m} | {_cell(s['base'])} | {_cell(s['adapted'])} | "
                             f"{_cell(s['difference'], True)} |")
            lines.append("")
    return "\n".join(lines) + "\n"
