"""Monte Carlo error rates of the champion gate's non-inferiority rule (pneumonia.gate, rule 5).

`python -m benchmarks.gate_error_rates [--reps N] [--seed S] [--margin M]` prints, for a
candidate whose TRUE accuracy difference from the champion is `delta`, how often the gate
promotes it — with the rule it uses (lower bound of the paired 95 % patient-bootstrap interval
above -margin) and, for comparison, with the rule it replaced ("not significantly worse": the
interval not wholly below 0):

- at delta = -margin the promote rate is the gate's type I error (a model as bad as the margin
  allowed through; the rule's nominal one-sided level is 2.5 %);
- at delta = 0 one minus the promote rate is its type II error (an equally good model blocked).

The simulation (our reading of "a new test set from the same population"): the population is
the committed test set (624 images of 427 patients, metrics/recipe/rcp-dn121-ema-s1.csv) with
that run's per-image correctness as the champion. Each replicate draws a new test set of 427
patients with replacement (all images of a drawn patient), and a new candidate: it disagrees
with the champion on a share `discordance` of the images (independently per image), right where
the champion is wrong on a share c and wrong where it is right on a share b, with c - b = delta
and b + c = discordance. The decision is the gate's own function (`pneumonia.gate.
paired_accuracy`, 2000 resamples, its fixed seed). Discordance 0.035 is what two seeds of the
CPU recipe show on the test set (0.027-0.045 over the 10 pairs of rcp-dn121-ema); 0.10 stands
for two different models.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
POPULATION = ROOT / "metrics" / "recipe" / "rcp-dn121-ema-s1.csv"
DISCORDANCES = (0.035, 0.10)


def population(path: Path = POPULATION) -> tuple[np.ndarray, np.ndarray]:
    """(patient code per image, champion correct per image) of the committed run."""
    frame = pd.read_csv(path, dtype={"patient_id": str, "image_id": str})
    y = (frame["actual"] == "PNEUMONIA").to_numpy(int)
    correct = ((frame["probability"].to_numpy(float) >= 0.5).astype(int) == y).astype(int)
    codes = np.unique(frame["patient_id"].to_numpy(str), return_inverse=True)[1].ravel()
    return codes, correct


def promote_rates(delta: float, discordance: float, margin: float, reps: int, seed: int,
                  codes: np.ndarray, champion: np.ndarray) -> dict[str, float]:
    """Share of ``reps`` simulated test sets on which each rule promotes the candidate."""
    from pneumonia.gate import non_inferior, paired_accuracy

    if discordance < abs(delta):
        raise ValueError("discordance must be at least |delta|")
    rng = np.random.default_rng(seed)
    acc = champion.mean()
    b, c = (discordance - delta) / 2, (discordance + delta) / 2  # shares of all images
    flip_right, flip_wrong = b / acc, c / (1 - acc)  # per-image flip probabilities
    if flip_right > 1 or flip_wrong > 1:
        raise ValueError("that delta and discordance cannot be reached from this champion")
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    n_patients = len(members)
    new_rule = old_rule = 0
    for _ in range(reps):
        drawn = rng.integers(0, n_patients, n_patients)
        idx = np.concatenate([members[g] for g in drawn])
        groups = np.repeat(np.arange(n_patients), [members[g].size for g in drawn])
        champ = champion[idx]
        flip = rng.uniform(size=idx.size) < np.where(champ == 1, flip_right, flip_wrong)
        cand = np.where(flip, 1 - champ, champ)
        res = paired_accuracy(np.zeros(idx.size), champ, cand, groups)
        new_rule += non_inferior(res["ci_low"], margin)
        old_rule += not res["ci_high"] < 0
    return {"non_inferiority": new_rule / reps, "not_significantly_worse": old_rule / reps}


def table(reps: int, seed: int, margin: float) -> list[dict[str, float]]:
    codes, champion = population()
    rows = []
    for discordance in DISCORDANCES:
        for delta in sorted({0.0, -0.01, -0.015, -margin, -0.03}, reverse=True):
            rates = promote_rates(delta, discordance, margin, reps, seed, codes, champion)
            rows.append({"discordance": discordance, "delta": delta, **rates})
    return rows


def main(argv: list[str] | None = None) -> int:
    from pneumonia.params import load_params

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate_error_rates",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=1000, help="test sets per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--margin", type=float, default=None,
                        help="default: params.yaml evaluate.champion_margin")
    args = parser.parse_args(argv)
    margin = (load_params(ROOT / "params.yaml").evaluate.champion_margin
              if args.margin is None else args.margin)
    start = time.perf_counter()
    rows = table(args.reps, args.seed, margin)
    print(f"champion gate error rates: margin {margin:g}, {args.reps} simulated test sets per "
          f"row, seed {args.seed}; {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}")
    print("| discordance | true delta | promoted (non-inferiority) | promoted (old: not "
          "significantly worse) |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['discordance']:.3f} | {r['delta']:+.4f} | {r['non_inferiority']:.3f} | "
              f"{r['not_significantly_worse']:.3f} |")
    for d in DISCORDANCES:
        at = {r["delta"]: r for r in rows if r["discordance"] == d}
        print(f"discordance {d:.3f}: type I (promoted at delta = -margin) "
              f"{at[-margin]['non_inferiority']:.3f}; type II (blocked at delta = 0) "
              f"{1 - at[0.0]['non_inferiority']:.3f}")
    print(f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
