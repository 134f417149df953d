"""`make bench`: performance goals of the pipeline, measured on this machine.

    python -m benchmarks.run                 # all cases, full dataset (~15 min on 2 CPU cores)
    python -m benchmarks.run --quick         # tiny sizes on the bundled sample (smoke test)
    python -m benchmarks.run --only input    # one case (repeatable: --only dvc --only memory)

Cases, one module each in benchmarks/cases/ (GOAL, NEEDS and measure()); each runs in its own
Python subprocess, so its memory and imports are its own:

  input     images/s of the training input (pneumonia.model.inputs train pipeline, cache warm) vs the
            paper-style legacy Keras ImageDataGenerator.flow_from_directory on the same images and
            augmentation ranges (params.yaml train.augment). Goal >= 5x.
  step      train-step time of the real model fed by the real input pipeline vs fed one in-memory
            batch (same model, batch size). Goal <= 1.05.
  dvc       `dvc repro split` and `dvc status` with nothing changed, in a scratch git+DVC copy of
            the project with the data stages run on the full dataset. Goal <= 1.5 s.
  parallel  ingest and balance with workers=1 vs workers=2: speedup, outputs byte-identical.
            Goal >= 1.7x.
  memory    peak RSS (ru_maxrss) of the train stage's work: the full train+val sets cached through
            pneumonia.model.inputs, then real training steps of the real model. Goal <= 2.5 GB.
  bootstrap seconds of the patient-grouped bootstrap of every test metric (pneumonia.stats) on a
            synthetic 624-image, 2000-resample test set. Goal <= 2 s.
  predict   images/s of `pneumonia predict`'s pipeline (files read, decoded and resized in a
            thread pool, batched through DenseNet201) vs the forward pass on in-memory tensors,
            test set at 224 px. Goal >= 0.9.
  rest      p50/p95 latency of one image through `mlflow models serve` (the registry's
            champion). Goal p95 <= 0.5 s.

Not in CASES (no goal to meet, a trade-off the user chooses): benchmarks/cases/determinism.py,
the cost of train.deterministic (op determinism on vs off); run it alone with
`python -m benchmarks.cases.determinism`. Nor benchmarks/cases/serve_memory.py, the served
model's peak RSS under 8 concurrent clients of a 49-megapixel PNG per serve.max_concurrent_decodes
(`python -m benchmarks.cases.serve_memory --out benchmarks/serve_memory.json`).

Prints one line per case (measured values, goal, ratio, PASS/MISS) and writes
benchmarks/results.json (machine description + every number). Scratch files live in
benchmarks/results/scratch/ (git-ignored) unless --workdir says otherwise.

The dataset: the full Kaggle/Mendeley chest X-ray folder given by --raw, $BENCH_RAW,
/work/shared/datasets/chest_xray or data/raw/chest_xray (first that exists); --quick uses the
bundled sample (data/sample/chest_xray).

Every core counts: other processes on the machine change the numbers. Each result records how
many cores other processes kept busy while it ran (from /proc/stat minus our own CPU time), the
load average and a "parallel capacity" probe (the same pure-CPU work on 1 vs 2 processes just
before the case: ~1.9 on an idle 2-core machine, ~1 when another process holds a core).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PY,
    REPO,
    busy_cpu_s,
    capacity,
    env,
    find_raw,
    machine,
    prepare,
    rss_gb,
    sizes,
)

CASES = ("input", "step", "dvc", "parallel", "memory", "bootstrap", "predict", "rest")
RESULTS = REPO / "benchmarks/results.json"
DEFAULT_WORKDIR = REPO / "benchmarks/results/scratch"
CONTENDED_CORES = 0.25  # other processes' busy cores above which a case's timings are flagged


def case_module(case: str):
    """The module of one case (benchmarks/cases/<case>.py)."""
    import importlib

    return importlib.import_module(f"benchmarks.cases.{case}")


GOALS = {case: case_module(case).GOAL for case in CASES}  # case -> (description, op, target)


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in a fresh subprocess; return its result dict."""
    result_file = Path(args.workdir) / f"{case}.json"
    result_file.unlink(missing_ok=True)
    cmd = [PY, "-m", "benchmarks.run", "--case", case, "--workdir", str(args.workdir),
           "--result", str(result_file)]
    if args.quick:
        cmd.append("--quick")
    if args.raw:
        cmd += ["--raw", args.raw]
    load = os.getloadavg()[0]
    cap, probe = capacity()
    t, busy, ru = time.perf_counter(), busy_cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN)
    e = env()
    e["CUDA_VISIBLE_DEVICES"] = ""  # the goals are CPU goals
    r = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = (after.ru_utime - ru.ru_utime) + (after.ru_stime - ru.ru_stime)
    others = max(0.0, busy_cpu_s() - busy - ours) / wall
    if r.returncode or not result_file.is_file():
        return {"error": f"exit {r.returncode}: {(r.stdout + r.stderr)[-2500:]}",
                "value": None, "wall_s": round(wall, 1)}
    res = json.loads(result_file.read_text())
    res.update(wall_s=round(wall, 1), loadavg_1min_before=round(load, 2),
               parallel_capacity_before=cap, single_core_probe_s_before=probe,
               other_processes_cores=round(others, 2))
    return res


def worker(args: argparse.Namespace) -> None:
    sz = sizes(args.quick)
    work = Path(args.workdir)
    raw = find_raw(args.raw, args.quick)
    case = args.case
    res = case_module(case).measure(work, raw, sz, args.quick)
    res["peak_rss_gb_case_process"] = round(rss_gb(), 3)
    Path(args.result).write_text(json.dumps(res, indent=2, default=float))


def verdict(case: str, value: float | None) -> tuple[str, float | None]:
    if value is None:
        return "ERROR", None
    _, op, target = GOALS[case]
    ok = value >= target if op == ">=" else value <= target
    ratio = value / target if op == ">=" else target / value if value else float("inf")
    return ("PASS" if ok else "MISS"), ratio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes on the bundled sample")
    ap.add_argument("--only", action="append", choices=CASES, help="run only this case")
    ap.add_argument("--raw", help="the full dataset (folder or zip)")
    ap.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="scratch directory")
    ap.add_argument("--output", default=None, help=f"results JSON (default {RESULTS})")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.workdir = str(Path(args.workdir).resolve())
    if args.case:
        worker(args)
        return 0

    sz = sizes(args.quick)
    raw = find_raw(args.raw, args.quick)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cases = [c for c in CASES if not args.only or c in args.only]
    info = machine()
    print(f"benchmarks on {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB; "
          f"{'quick' if args.quick else 'full'} sizes; dataset {raw}", flush=True)
    if any(case_module(c).NEEDS == "prep" for c in cases):
        t = time.perf_counter()
        prepare(work, raw, sz)
        print(f"  prepared data stages in {work / 'prep'} ({time.perf_counter() - t:.0f} s)")

    results: dict[str, Any] = {}
    for case in cases:
        print(f"- {case} ...", flush=True)
        res = run_case(case, args)
        # A case whose baseline is gone from the installed libraries says so: SKIP, not ERROR.
        status, ratio = ("SKIP", None) if res.get("skipped") else verdict(case, res.get("value"))
        desc, op, target = GOALS[case]
        res.update(goal=f"{desc} {op} {target}", status=status,
                   ratio_to_goal=None if ratio is None else round(ratio, 3))
        # Another process holding a core makes timing goals unreliable (speedups, overheads).
        res["contended"] = (res.get("other_processes_cores") or 0.0) > CONTENDED_CORES
        results[case] = res
        if status == "ERROR":
            print(f"  {case:9s} ERROR {res['error']}")
            continue
        if status == "SKIP":
            print(f"  {case:9s} SKIP {res['skipped']}: {res['summary']}", flush=True)
            continue
        print(f"  {case:9s} {res['value']:.3f} (goal {op} {target}, {ratio:.2f}x of goal) "
              f"{status}: {res['summary']} [other processes busy {res['other_processes_cores']} "
              f"of {info['cores']} cores; {res['wall_s']:.0f} s]"
              + ("  CONTENDED: rerun on an idle machine" if res["contended"] else ""), flush=True)

    out_path = Path(args.output) if args.output else RESULTS
    previous = {}
    if out_path.is_file() and args.only:
        try:
            previous = json.loads(out_path.read_text()).get("cases", {})
        except ValueError:
            previous = {}
    doc = {"machine": info, "mode": "quick" if args.quick else "full", "dataset": str(raw),
           "command": "python -m benchmarks.run " + " ".join(argv if argv is not None
                                                             else sys.argv[1:]),
           "sizes": sz, "cases": {**previous, **results}}
    out_path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"wrote {out_path}")
    return 1 if any(r["status"] == "ERROR" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
