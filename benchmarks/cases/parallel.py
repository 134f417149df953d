"""Benchmark case `parallel`: ingest and balance with workers=1 vs workers=2: speedup, outputs byte-
identical. Goal >= 1.7x.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PY,
    sh,
    sh_cpu,
    spread,
    tree_hash,
    write_params,
)

GOAL = ("data stages, workers=1 / workers=2 time (smaller of ingest, balance)", ">=", 1.7)
NEEDS = "work"  # "prep": the data stages prepared once; "work": a scratch folder


# parallel data stages
def measure(work: Path, raw: Path, sz: dict[str, Any], quick: bool) -> dict[str, Any]:
    proj = work / "parallel"
    shutil.rmtree(proj, ignore_errors=True)
    proj.mkdir(parents=True)
    out: dict[str, Any] = {}
    outs = {
        "ingest": ("data/images", "data/manifest.csv", "data/ingest_report.json"),
        "balance": ("data/balanced", "data/balanced.csv", "metrics/balance.json"),
    }
    for stage in ("ingest", "balance"):
        times: dict[int, list[float]] = {1: [], 2: []}
        cpu: dict[int, list[float]] = {1: [], 2: []}
        foreign: dict[int, list[float]] = {1: [], 2: []}
        hashes: dict[int, set[str]] = {1: set(), 2: set()}
        nfiles = 0
        # One untimed run first, so every timed run replaces the outputs of a previous one, as a
        # rerun does. Without it the first workers=1 run alone wrote into an empty project, which
        # on this machine's journal-less ext4 skips ~4 s of kernel time: creating files soon
        # after deleting thousands makes ext4 scan recently freed inodes (`recently_deleted`,
        # seen with `perf record`), and a stage's outputs are always deleted before it reruns.
        write_params(proj, raw, sz, ingest={"workers": 2}, balance={"workers": 2})
        if stage == "balance":
            sh([PY, "-m", "stages.validate"], proj)
        sh([PY, "-m", f"stages.{stage}"], proj)
        for rep in range(sz["parallel_reps"]):
            for w in ((1, 2) if rep % 2 == 0 else (2, 1)):  # alternate, so drift hits both
                write_params(proj, raw, sz, ingest={"workers": w}, balance={"workers": w})
                # Timed as `dvc repro` runs the stage: DVC deletes a stage's outputs before it
                # starts the command, so the deletion is not the command's time.
                for out_path in outs[stage]:
                    target = proj / out_path
                    if target.is_dir():
                        shutil.rmtree(target)
                    else:
                        target.unlink(missing_ok=True)
                wall, cpu_s, other_s = sh_cpu([PY, "-m", f"stages.{stage}"], proj)
                times[w].append(wall)
                cpu[w].append(cpu_s)
                foreign[w].append(other_s / wall)  # cores other processes kept busy
                digest, nfiles = tree_hash(*(proj / p for p in outs[stage]))
                hashes[w].add(digest)
        identical = len(hashes[1] | hashes[2]) == 1
        # The median of the ratios of runs made back to back: this VM's speed drifts over
        # minutes, so comparing one run with another made minutes apart measures the drift.
        speedup = statistics.median(t1 / t2 for t1, t2 in zip(times[1], times[2], strict=True))
        # CPU seconds per run: equal for 1 and 2 workers = no parallel overhead, so a speedup
        # short of 2 means no second core was free (see parallel_capacity_before).
        out[stage] = {"workers1_s": spread(times[1]), "workers2_s": spread(times[2]),
                      "workers1_cpu_s": spread(cpu[1]), "workers2_cpu_s": spread(cpu[2]),
                      "other_processes_cores_w1": spread(foreign[1]),
                      "other_processes_cores_w2": spread(foreign[2]),
                      "speedup": round(speedup, 3),
                      "ratio_of_minimums": round(min(times[1]) / min(times[2]), 3),
                      "identical_outputs": identical,
                      "output_files": nfiles, "sha256": sorted(hashes[1] | hashes[2])}
    value = min(out["ingest"]["speedup"], out["balance"]["speedup"])
    same = out["ingest"]["identical_outputs"] and out["balance"]["identical_outputs"]
    return {
        "value": value if same else 0.0,
        "summary": "; ".join(
            f"{s}: {o['workers1_s']['median']:.1f} -> {o['workers2_s']['median']:.1f} s "
            f"(median {o['speedup']:.2f}x of back-to-back pairs, CPU "
            f"{o['workers1_cpu_s']['median']:.0f}/{o['workers2_cpu_s']['median']:.0f} s, others used "
            f"{o['other_processes_cores_w2']['median']:.2f} cores, "
            f"{o['output_files']} files "
            f"{'identical' if o['identical_outputs'] else 'DIFFER'})"
            for s, o in out.items()
        ),
        **out,
    }
