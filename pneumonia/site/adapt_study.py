"""`pneumonia site adapt-study RUN_DIR... --data DIR`: what AdaBN does, measured.

For each trained run (RUN_DIR/models/model.keras) and each of ``--splits`` random patient-grouped
halves of the official test set: the BatchNorm statistics are re-estimated (pneumonia.site.adapt)
on n unlabelled images of one half (n in ``--sizes``, and the whole half), and the other half is
scored with the run's own threshold (``--threshold``, the runs' 0.5), against the same model
unadapted on the same images. The control: the same on the validation originals (an unshifted
site: halves of the images the model was calibrated on), where AdaBN should change nothing.

Reported per condition: accuracy, NORMAL recall, PNEUMONIA recall and ROC AUC, adapted and
unadapted, and their paired difference: mean over seeds x splits, with the 95 % t-interval over
seeds (each seed's mean over its splits); one seed: the 2.5-97.5 % range over splits.
Writes ``--out``.md/.json. DIR: the data the runs were trained on (split.csv, images/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.site import draws
from pneumonia.site.adapt import adapt_batchnorm
from pneumonia.site.check import embed, mmd_test
from pneumonia.site.rundata import images as _images

METRICS = ("accuracy", "NORMAL_recall", "PNEUMONIA_recall", "roc_auc")


def _scores(model: Any, x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(model.predict_on_batch(x[i:i + 256]), dtype=float)
                           .reshape(-1) for i in range(0, len(x), 256)])


def _metrics(y: np.ndarray, p: np.ndarray, t: float) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    pred = p >= t
    return {"accuracy": float(np.mean(pred == y)), "NORMAL_recall": float(np.mean(~pred[y == 0])),
            "PNEUMONIA_recall": float(np.mean(pred[y == 1])),
            "roc_auc": float(roc_auc_score(y, p))}


def measure_run(run: Path, data: Path, splits: int, sizes: list[int], threshold: float,
                seed: int) -> dict[str, list[dict[str, float]]]:
    """{condition: [per split {metric, base_metric}]} for one trained run."""
    import keras

    model = keras.saving.load_model(run / "models" / "model.keras", compile=False)
    weights = model.get_weights()
    size = int(model.input_shape[1])
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
            _, p_check = mmd_test(emb[pool], ref, 200, int(rng.integers(1 << 30)))
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


def _cell(s: dict[str, Any], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return (f"{f.format(s['mean'])} [{f.format(s['low'])}, {f.format(s['high'])}]")


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# AdaBN at a new site: measured", "",
             (f"Command: `pneumonia site adapt-study {' '.join(doc['runs'])} --data {doc['data']} "
             f"--splits {doc['splits']}` ({doc['measured']} UTC, {doc['machine']}, "
             f"{doc['seconds']:.0f} s). Runs: {len(doc['runs'])} trained models; data: the "
             "64-px development copy they were trained on (5840 of its 5856 images are 224-px "
             "re-encodings, not the public download). Each split: a random patient-grouped "
             "half of the site's images adapts the BatchNorm statistics (unlabelled), the "
             f"other half is scored at threshold {doc['threshold']:g}, adapted and not. Cells: "
             "mean over seeds x splits [95 % t-interval over seeds; one seed: the 2.5-97.5 % "
             "range over splits].")
             + (f" Runs {', '.join(doc['reused'])} were measured by an earlier invocation "
                "with the same settings (`--reuse`); the time above is the others'."
                if doc.get("reused") else ""), ""]
    for cond, metrics in doc["conditions"].items():
        lines += [f"## {cond}", ""]
        shares = [row["adapted"] for rows in doc["per_run"].values() for row in rows[cond]
                  if "adapted" in row]
        if shares:
            lines += [(f"`site check` found a shift (and AdaBN was applied) in "
                      f"{sum(shares):.0f} of {len(shares)} splits."), ""]
        lines += ["| metric | unadapted | AdaBN | difference |", "|---|---|---|---|"]
        for m, s in metrics.items():
            lines.append(f"| {m} | {_cell(s['base'])} | {_cell(s['adapted'])} | "
                         f"{_cell(s['difference'], True)} |")
        lines.append("")
    return "\n".join(lines) + "\n"
