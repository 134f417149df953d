"""Helpers shared by the benchmark cases: sizes, the dataset, subprocesses, CPU accounting,
the data stages prepared once, the machine's description."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
RAW_CANDIDATES = (Path("/work/shared/datasets/chest_xray"), REPO / "data/raw/chest_xray")
SAMPLE = REPO / "data/sample/chest_xray"



# ----------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------
def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "image_size": 64, "target_normal": 130, "table1": False, "batch": 8,
            "input_reps": 2, "idg_batches": 6, "layers_batches": 6,
            "step_size": 64, "step_backbone": "densenet121", "step_steps": 3, "step_rounds": 2,
            "mem_size": 64, "mem_backbone": "densenet121", "mem_steps": 2,
            "dvc_runs": 3, "parallel_reps": 1,
        }
    return {
        "image_size": 224, "target_normal": 3849, "table1": True, "batch": 32,
        "input_reps": 3, "idg_batches": 40, "layers_batches": 40,
        "step_size": 224, "step_backbone": "densenet201", "step_steps": 4, "step_rounds": 6,
        "mem_size": 224, "mem_backbone": "densenet201", "mem_steps": 20,
        "dvc_runs": 5, "parallel_reps": 3,
    }


def find_raw(arg: str | None, quick: bool) -> Path:
    if quick:
        return SAMPLE
    for cand in [Path(arg)] if arg else [*(Path(p) for p in [os.environ.get("BENCH_RAW")] if p),
                                        *RAW_CANDIDATES]:
        if cand.is_dir() or cand.is_file():
            return cand.resolve()
    sys.exit("benchmarks: the full dataset is not found. Pass --raw PATH (Kaggle/Mendeley chest_xray "
             "folder or zip), set BENCH_RAW, or put it at data/raw/chest_xray (see docs/data.md).")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["PATH"] = str(Path(PY).parent) + os.pathsep + e.get("PATH", "")
    e["DVC_NO_ANALYTICS"] = "1"
    e.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    e.setdefault("PNEUMONIA_LOG_LEVEL", "WARNING")
    return e


def sh(cmd: list[str], cwd: Path, quiet: bool = True) -> float:
    """Run a command, fail loudly with its output; return its wall time in seconds."""
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=quiet, text=True, check=False)
    wall = time.perf_counter() - t
    if r.returncode:
        out = (r.stdout or "")[-3000:] + (r.stderr or "")[-3000:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed in {cwd} (exit {r.returncode}):\n{out}")
    return wall


def busy_cpu_s() -> float:
    """CPU seconds all processes of the machine have used so far (all CPU time but idle and
    iowait; guest time is already inside user time)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) \
        - getattr(t, "guest_nice", 0.0)


def sh_cpu(cmd: list[str], cwd: Path) -> tuple[float, float, float]:
    """`sh`, also returning the CPU seconds (user + sys) the command and its children used, and
    the CPU seconds *other* processes used meanwhile (they slow a parallel run down)."""
    before, busy = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_s()
    wall = sh(cmd, cwd)
    after, busy = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_s() - busy
    ours = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, ours, max(0.0, busy - ours)


def write_params(dest: Path, raw: Path | str, sz: dict[str, Any], **extra: dict[str, Any]) -> None:
    import yaml

    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["data"]["raw"] = str(raw)
    p["data"]["image_size"] = sz["image_size"]
    p["validate"]["table1_counts"] = sz["table1"]
    p["balance"]["target_normal"] = sz["target_normal"]
    p["model"]["weights"] = "none"  # no download on these machines; timings do not depend on it
    for section, values in extra.items():
        p[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def tree_hash(*paths: Path) -> tuple[str, int]:
    """One sha256 over every file (relative path + bytes) under `paths`, and the file count."""
    h, n = hashlib.sha256(), 0
    for p in paths:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            h.update(f.as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
            n += 1
    return h.hexdigest(), n


def _burn(_: int) -> int:
    import zlib

    data = bytes(range(256)) * 2048
    for _ in range(12):
        zlib.compress(data, 6)
    return 0


def capacity() -> tuple[float, float]:
    """(parallel capacity, single-core probe seconds) now. Capacity: time of 8 pure-CPU tasks on 1
    process / on 2 processes (2.0 on an idle 2-core machine; ~1.0 when another process keeps a
    core busy). The probe: those 8 tasks' time on one process, which shows how fast this VM's
    vCPUs are at the moment (it drifts by 10-40 % over minutes on the development machine)."""
    import multiprocessing

    t = time.perf_counter()
    for i in range(8):
        _burn(i)
    one = time.perf_counter() - t
    with multiprocessing.Pool(2) as pool:
        pool.map(_burn, range(2))  # start-up
        t = time.perf_counter()
        pool.map(_burn, range(8), chunksize=1)
        two = time.perf_counter() - t
    return round(one / two, 2), round(one, 3)


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 4), "min": round(min(xs), 4),
            "max": round(max(xs), 4), "n": len(xs)}


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


# ----------------------------------------------------------------------------------------------
# Shared preparation: the data stages once, in a scratch project (reused while unchanged)
# ----------------------------------------------------------------------------------------------
def prepare(work: Path, raw: Path, sz: dict[str, Any]) -> Path:
    prep = work / "prep"
    data_sizes = {k: sz[k] for k in ("image_size", "target_normal", "table1")}
    stamp = json.dumps({"raw": str(raw), "sz": data_sizes, "stages": _stage_digest()},
                       sort_keys=True)
    if (prep / "data/split.csv").is_file() and (prep / ".stamp").is_file() \
            and (prep / ".stamp").read_text() == stamp:
        return prep
    shutil.rmtree(prep, ignore_errors=True)
    prep.mkdir(parents=True)
    write_params(prep, raw, sz)
    for stage in ("ingest", "validate", "balance", "split"):
        print(f"  prepare: {stage} ...", flush=True)
        sh([PY, "-m", f"stages.{stage}"], prep)
    (prep / ".stamp").write_text(stamp)
    return prep


def _stage_digest() -> str:
    h = hashlib.sha256()
    for path in sorted((REPO / "pneumonia").rglob("*.py")) + sorted((REPO / "stages").glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cpu_model() -> str:
    """The CPU's model name (pneumonia.evaluation.robustness.cpu_name)."""
    from pneumonia.evaluation.robustness import cpu_name

    return cpu_name()


def machine() -> dict[str, Any]:
    import psutil

    cpu = cpu_model()
    mem = round(psutil.virtual_memory().total / 2**30, 1)
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    dists = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos"),
             "keras": ("keras",), "dvc": ("dvc",), "numpy": ("numpy",), "pillow": ("pillow",),
             "Augmentor": ("Augmentor",), "mlflow": ("mlflow", "mlflow-skinny")}
    for name, candidates in dists.items():
        versions[name] = None
        for dist in candidates:
            try:
                versions[name] = version(dist)
                break
            except PackageNotFoundError:
                continue
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cpu": cpu, "cores": cores, "ram_gib": mem, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "gpu": "none used (CUDA_VISIBLE_DEVICES='')",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def bench_model(backbone: str, size: int):
    import keras

    from pneumonia.model.network import build_model
    from pneumonia.params import ModelParams

    keras.utils.set_random_seed(0)
    model = build_model(ModelParams(backbone=backbone, weights="none", trainable_layers=30),
                        size, None)
    model.compile(optimizer=keras.optimizers.Adam(2e-6), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model
