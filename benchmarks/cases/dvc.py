"""Benchmark case `dvc`: `dvc repro split` and `dvc status` with nothing changed, in a scratch git+DVC
copy of the project with the data stages run on the full dataset. Goal <= 1.5 s.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    sh,
    spread,
    write_params,
)

GOAL = ("DVC no-op (slowest of `dvc repro split` / `dvc status`), s", "<=", 1.5)
NEEDS = "work"  # "prep": the data stages prepared once; "work": a scratch folder


# DVC no-op
def measure(work: Path, raw: Path, sz: dict[str, Any], quick: bool) -> dict[str, Any]:
    proj = work / "dvcproj"
    shutil.rmtree(proj, ignore_errors=True)
    proj.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file() and not f.startswith("benchmarks/results"):
            (proj / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, proj / f)
    dest = proj / "data/raw/chest_xray"
    if raw.is_dir():
        shutil.copytree(raw, dest)
    else:
        shutil.copy2(raw, dest)
    write_params(proj, "data/raw/chest_xray", sz)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    sh(["git", "init", "-q"], proj)
    sh(["git", "add", "-A"], proj)
    sh([*git, "commit", "-q", "-m", "bench"], proj)
    first = sh(["dvc", "repro", "split"], proj)
    repro = [sh(["dvc", "repro", "split"], proj) for _ in range(sz["dvc_runs"])]
    status = [sh(["dvc", "status"], proj) for _ in range(sz["dvc_runs"])]
    tracked = sum(1 for d in ("data/images", "data/balanced") for f in (proj / d).rglob("*")
                  if f.is_file()) + 3  # + manifest.csv, balanced.csv, split.csv
    worst = max(statistics.median(repro), statistics.median(status))
    return {
        "value": worst,
        "summary": (f"{tracked} files under DVC: no-op `dvc repro split` "
                    f"{statistics.median(repro):.2f} s, `dvc status` "
                    f"{statistics.median(status):.2f} s (median of {sz['dvc_runs']}); first "
                    f"`dvc repro split` {first:.0f} s. train/evaluate not run here (a CPU epoch "
                    "at 224 px takes ~5 min)"),
        "files_under_dvc": tracked, "first_repro_split_s": round(first, 1),
        "noop_repro_split_s": spread(repro), "status_s": spread(status),
    }
