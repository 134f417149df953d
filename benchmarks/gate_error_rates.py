"""Monte Carlo error rates of the champion gate's non-inferiority rule (pneumonia.gate, rule 5).

`python -m benchmarks.gate_error_rates [--reps N] [--seed S] [--margin M] [--margins M ...]
[--histories H]` prints three tables. First, for a candidate whose TRUE accuracy difference from
the champion is `delta`, how often the gate promotes it — with the rule it uses (lower bound of
the paired 95 % patient-bootstrap interval above -margin) and, for comparison, with the rule it
replaced ("not significantly worse": the interval not wholly below 0):

- at delta = -margin the promote rate is the gate's type I error (a model as bad as the margin
  allowed through; the rule's nominal one-sided level is 2.5 %);
- at delta = 0 one minus the promote rate is its type II error (an equally good model blocked).

The simulation (our reading of "a new test set from the same population"): the population is
the committed test set (624 images of 427 patients, metrics/recipe/rcp-dn121-ema-s1.csv) with
that run's per-image correctness as the champion. Each replicate draws a new test set of 427
patients with replacement (all images of a drawn patient), and a new candidate: it disagrees
with the champion on a share `discordance` of the images (independently per image), right where
the champion is wrong on a share c and wrong where it is right on a share b, with c - b = delta
and b + c = discordance. The decision is the gate's own (`pneumonia.gate.paired_accuracy`'s
interval, 2000 resamples, its fixed seed; `non_inferior`). Discordance 0.035 is what two seeds
of the CPU recipe show on the test set (0.027-0.045 over the 10 pairs of rcp-dn121-ema); 0.10
stands for two different models.

Second (issue 33 item 3), the promote rate of a candidate better, equal or worse by `delta`, for
each margin of `--margins`: the trade-off a default margin makes. Third (issue 33 item 5), 20
candidates of equal true quality submitted one after the other on one test set
(``sequence_block_rates``): how often the k-th is blocked by today's rules 5-6 (non-inferior to
the champion and to the anchor version's predictions) and by the rules they replaced (the
anchor's point accuracy - margin, not significantly worse than the champion).

The interval is the gate's (``PairedBootstrap``: `paired_accuracy`'s arithmetic with the sums
per patient taken first, identical to it; tests/test_benchmarks.py compares them).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
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


class PairedBootstrap:
    """`pneumonia.gate.paired_accuracy`'s interval, computed per patient instead of per image.

    The gate draws its bootstrap from a fixed seed over the G patients of the test set, so on
    every simulated test set of G patients it draws the same (resamples x patients) counts: the
    resampled difference is (counts @ per-patient sum of b - a) / (counts @ images per
    patient). That is the gate's own arithmetic with the image sums taken first — equal to
    ``paired_accuracy`` up to float rounding (tests/test_benchmarks.py checks it), and ~100 times
    faster, which is what makes the sequences of 20 candidates below affordable."""

    def __init__(self, n_patients: int) -> None:
        from pneumonia.gate import LEVEL, N_RESAMPLES, SEED
        from pneumonia.stats.bootstrap import patient_weights

        # one image per patient: the weights ARE the per-patient counts the gate draws
        self.counts = patient_weights(np.arange(n_patients), n_patients, N_RESAMPLES,
                                      SEED).astype(float)
        self.q = [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2]

    def interval(self, groups: np.ndarray, correct_a: np.ndarray, correct_b: np.ndarray,
                 sizes: np.ndarray) -> tuple[float, float]:
        """(low, high) of b - a; ``groups``: patient slot 0..G-1 per image, ``sizes``: images
        per slot."""
        per = np.bincount(groups, weights=correct_b - correct_a, minlength=sizes.size)
        return self.percentiles((self.counts @ per) / (self.counts @ sizes))

    def percentiles(self, diff: np.ndarray) -> tuple[float, float]:
        low, high = np.percentile(diff, self.q)
        return float(low), float(high)


def _flips(champion: np.ndarray, delta: float, discordance: float) -> tuple[float, float]:
    """Per-image flip probabilities (right -> wrong, wrong -> right) of a candidate that
    disagrees with ``champion`` on a share ``discordance`` of the images and is ``delta`` better."""
    if discordance < abs(delta):
        raise ValueError("discordance must be at least |delta|")
    acc = champion.mean()
    b, c = (discordance - delta) / 2, (discordance + delta) / 2  # shares of all images
    flip_right, flip_wrong = b / acc, c / (1 - acc)
    if flip_right > 1 or flip_wrong > 1:
        raise ValueError("that delta and discordance cannot be reached from this champion")
    return flip_right, flip_wrong


@dataclass(frozen=True)
class Members:
    """The population's images by patient: ``order[start[g]:start[g] + size[g]]`` are patient
    g's images, in ascending order."""

    order: np.ndarray
    start: np.ndarray
    size: np.ndarray


def _draw(rng: np.random.Generator, members: Members
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A new test set: as many patients as the population's, drawn with replacement, all images
    of each. (image indices into the population, patient slot per image, images per slot)."""
    n = members.size.size
    drawn = rng.integers(0, n, n)
    sizes = members.size[drawn]
    slot = np.repeat(np.arange(n), sizes)
    within = np.arange(slot.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return members.order[members.start[drawn][slot] + within], slot, sizes.astype(float)


def _members(codes: np.ndarray) -> Members:
    size = np.bincount(codes)
    return Members(np.argsort(codes, kind="stable"), np.cumsum(size) - size, size)


def promote_rates(delta: float, discordance: float, margin: float, reps: int, seed: int,
                  codes: np.ndarray, champion: np.ndarray) -> dict[str, float]:
    """Share of ``reps`` simulated test sets on which each rule promotes the candidate."""
    from pneumonia.gate import non_inferior

    flip_right, flip_wrong = _flips(champion, delta, discordance)
    rng = np.random.default_rng(seed)
    members = _members(codes)
    boot = PairedBootstrap(members.size.size)
    new_rule = old_rule = 0
    for _ in range(reps):
        idx, groups, sizes = _draw(rng, members)
        champ = champion[idx]
        flip = rng.uniform(size=idx.size) < np.where(champ == 1, flip_right, flip_wrong)
        cand = np.where(flip, 1 - champ, champ)
        low, high = boot.interval(groups, champ, cand, sizes)
        new_rule += non_inferior(low, margin)
        old_rule += not high < 0
    return {"non_inferiority": new_rule / reps, "not_significantly_worse": old_rule / reps}


SEQUENCE = 20  # candidates in a row (issue 33 item 5)
TRIES = (1, 2, 5, 10, 20)


def sequence_block_rates(discordance: float, margin: float, histories: int, seed: int,
                         codes: np.ndarray, champion: np.ndarray, n: int = SEQUENCE
                         ) -> dict[str, np.ndarray]:
    """Issue 33 item 5: ``n`` candidates of EQUAL true quality, one after the other, on one test
    set (a new one per history). All n + 1 models (the first champion too) are independent
    draws of the same kind: each departs from the committed run on a share ``discordance`` / 2
    of the images, as often right-to-wrong as wrong-to-right, so that two of them disagree on
    about ``discordance`` of the images and none is better in truth.

    The gate's rules 5-6 (pneumonia.gate.decide): non-inferior to the champion, and — when the
    anchor (the champion with the best test accuracy so far; never moves down) is another
    version — to the anchor's predictions by the same paired test. Beside it, the rule it
    replaced: accuracy >= the anchor's POINT accuracy - margin and not significantly worse than
    the champion. Returns, per rule, the share of histories in which candidate k (1..n) is
    blocked."""
    from pneumonia.gate import non_inferior

    flip_right, flip_wrong = _flips(champion, 0.0, discordance / 2)
    rng = np.random.default_rng(seed)
    members = _members(codes)
    boot = PairedBootstrap(members.size.size)
    blocked = {"non_inferiority": np.zeros(n), "point_anchor": np.zeros(n)}
    for _ in range(histories):
        idx, groups, sizes = _draw(rng, members)
        base = champion[idx]
        flips = rng.uniform(size=(n + 1, idx.size)) < np.where(base == 1, flip_right, flip_wrong)
        models = np.where(flips, 1 - base, base).astype(float)  # model 0: the first champion
        acc = models.mean(axis=1)
        # every model's resampled accuracy at once: (resamples, models); a paired difference
        # is then a difference of two columns (PairedBootstrap.interval's arithmetic)
        per = np.stack([np.bincount(groups, weights=m, minlength=sizes.size) for m in models])
        resampled = (boot.counts @ per.T) / (boot.counts @ sizes)[:, None]

        def interval(a: int, b: int) -> tuple[float, float]:
            return boot.percentiles(resampled[:, b] - resampled[:, a])  # noqa: B023

        champ = anchor = 0  # today's gate
        old_champ, old_anchor = 0, acc[0]  # the replaced rule
        for k in range(1, n + 1):
            ok = non_inferior(interval(champ, k)[0], margin)
            if ok and anchor != champ:
                ok = non_inferior(interval(anchor, k)[0], margin)
            if ok:
                champ = k
                anchor = k if acc[k] > acc[anchor] else anchor
            else:
                blocked["non_inferiority"][k - 1] += 1
            old_ok = (acc[k] >= old_anchor - margin - 1e-9
                      and not interval(old_champ, k)[1] < 0)
            if old_ok:
                old_champ, old_anchor = k, max(old_anchor, acc[k])
            else:
                blocked["point_anchor"][k - 1] += 1
    return {rule: b / histories for rule, b in blocked.items()}


def table(reps: int, seed: int, margin: float) -> list[dict[str, float]]:
    codes, champion = population()
    rows = []
    for discordance in DISCORDANCES:
        for delta in sorted({0.0, -0.01, -0.015, -margin, -0.03}, reverse=True):
            rates = promote_rates(delta, discordance, margin, reps, seed, codes, champion)
            rows.append({"discordance": discordance, "delta": delta, **rates})
    return rows


MARGIN_DELTAS = (0.02, 0.01, 0.0, -0.01, -0.02, -0.03)


def margin_table(reps: int, seed: int, margins: tuple[float, ...]) -> list[dict[str, float]]:
    """Issue 33 item 3: the promote rate of candidates better, equal and worse, per margin. On
    each simulated test set one candidate per (discordance, delta) is drawn as in
    ``promote_rates`` and all are judged at every margin (common random numbers: the margins
    differ only by the margin)."""
    from pneumonia.gate import non_inferior

    codes, champion = population()
    cells = [(d, delta) for d in DISCORDANCES for delta in MARGIN_DELTAS]
    flips = np.array([_flips(champion, delta, d) for d, delta in cells])  # (cells, 2)
    rng = np.random.default_rng(seed)
    members = _members(codes)
    boot = PairedBootstrap(members.size.size)
    promoted = np.zeros((len(margins), len(cells)))
    for _ in range(reps):
        idx, groups, sizes = _draw(rng, members)
        champ = champion[idx].astype(float)
        p = np.where(champ == 1, flips[:, :1], flips[:, 1:])  # (cells, images)
        cands = np.where(rng.uniform(size=p.shape) < p, 1 - champ, champ)
        per = np.stack([np.bincount(groups, weights=c - champ, minlength=sizes.size)
                        for c in cands])
        diffs = (boot.counts @ per.T) / (boot.counts @ sizes)[:, None]
        lows = [boot.percentiles(diffs[:, j])[0] for j in range(len(cells))]
        for i, m in enumerate(margins):
            promoted[i] += [non_inferior(low, m) for low in lows]
    return [{"margin": m, "discordance": d, "delta": delta, "promoted": promoted[i, j] / reps}
            for i, m in enumerate(margins) for j, (d, delta) in enumerate(cells)]


def main(argv: list[str] | None = None) -> int:
    from pneumonia.evaluation.robustness import cpu_name
    from pneumonia.params import load_params

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate_error_rates",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=1000, help="test sets per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--margin", type=float, default=None,
                        help="default: params.yaml evaluate.champion_margin")
    parser.add_argument("--margins", type=float, nargs="*", default=[0.02, 0.03, 0.04],
                        help="the trade-off table's margins (none: skip it)")
    parser.add_argument("--histories", type=int, default=1000,
                        help="sequences of 20 equal candidates per row (0: skip them)")
    parser.add_argument("--only", nargs="+", choices=("single", "margins", "sequence"),
                        default=["single", "margins", "sequence"], help="the tables to print")
    args = parser.parse_args(argv)
    margin = (load_params(ROOT / "params.yaml").evaluate.champion_margin
              if args.margin is None else args.margin)
    start = time.perf_counter()
    print(f"champion gate error rates: margin {margin:g}, {args.reps} simulated test sets per "
          f"row, seed {args.seed}; {cpu_name()}, {time.strftime('%Y-%m-%d', time.gmtime())}")
    if "single" in args.only:
        single(table(args.reps, args.seed, margin), margin)
    if args.margins and "margins" in args.only:
        margins(args.reps, args.seed, args.margins)
    if args.histories and "sequence" in args.only:
        sequences(args.histories, args.seed, args.margins or [margin])
    print(f"{time.perf_counter() - start:.0f} s")
    return 0


def single(rows: list[dict[str, float]], margin: float) -> None:
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


def margins(reps: int, seed: int, values: list[float]) -> None:
    print(f"\npromoted by margin (non-inferiority; {reps} test sets, seed {seed}, the same "
          "candidates judged at every margin); columns: true delta")
    print("| margin | discordance | " + " | ".join(f"{d:+.2f}" for d in MARGIN_DELTAS) + " |")
    print("|---:|---:|" + "---:|" * len(MARGIN_DELTAS))
    cells = margin_table(reps, seed, tuple(values))
    for m in values:
        for d in DISCORDANCES:
            got = [c["promoted"] for c in cells if c["margin"] == m and c["discordance"] == d]
            print(f"| {m:.3f} | {d:.3f} | " + " | ".join(f"{x:.3f}" for x in got) + " |")


def sequences(histories: int, seed: int, values: list[float]) -> None:
    codes, champion = population()
    print(f"\n{SEQUENCE} candidates of equal true quality in a row, {histories} histories per "
          f"row, seed {seed}: share blocked at try k")
    print("| margin | discordance | rule | " + " | ".join(f"k={k}" for k in TRIES)
          + " | mean over 20 |")
    print("|---:|---:|---|" + "---:|" * (len(TRIES) + 1))
    for m in values:
        for d in DISCORDANCES:
            got = sequence_block_rates(d, m, histories, seed, codes, champion)
            for rule, label in (("non_inferiority", "paired, anchor's predictions (today)"),
                                ("point_anchor", "point anchor, not sig. worse (old)")):
                b = got[rule]
                print(f"| {m:.3f} | {d:.3f} | {label} | "
                      + " | ".join(f"{b[k - 1]:.3f}" for k in TRIES) + f" | {b.mean():.3f} |",
                      flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
