"""`make bench`: performance goals of the pipeline, measured on this machine.

    python -m benchmarks.run                 # all cases, full dataset (~15 min on 2 CPU cores)
    python -m benchmarks.run --quick         # tiny sizes on the bundled sample (smoke test)
    python -m benchmarks.run --only input    # one case (repeatable: --only dvc --only memory)

Cases (each runs in its own Python subprocess, so its memory and imports are its own):

  input     images/s of the training input (stages.dataset train pipeline, cache warm) vs the
            paper-style legacy Keras ImageDataGenerator.flow_from_directory on the same images and
            augmentation ranges (params.yaml train.augment). Goal >= 5x.
  step      train-step time of the real model fed by the real input pipeline vs fed one in-memory
            batch (same model, batch size). Goal <= 1.05.
  dvc       `dvc repro split` and `dvc status` with nothing changed, in a scratch git+DVC copy of
            the project with the data stages run on the full dataset. Goal <= 1.5 s.
  parallel  ingest and balance with workers=1 vs workers=2: speedup, outputs byte-identical.
            Goal >= 1.7x.
  memory    peak RSS (ru_maxrss) of the train stage's work: the full train+val sets cached through
            stages.dataset, then real training steps of the real model. Goal <= 2.5 GB.

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
CASES = ("input", "step", "dvc", "parallel", "memory")
RAW_CANDIDATES = (Path("/work/shared/datasets/chest_xray"), REPO / "data/raw/chest_xray")
SAMPLE = REPO / "data/sample/chest_xray"
RESULTS = REPO / "benchmarks/results.json"
DEFAULT_WORKDIR = REPO / "benchmarks/results/scratch"

CONTENDED_CORES = 0.25  # other processes' busy cores above which a case's timings are flagged
GOALS = {  # case -> (description, comparison, target)
    "input": ("input pipeline vs ImageDataGenerator, images/s", ">=", 5.0),
    "step": ("train step time, real input / in-memory tensors", "<=", 1.05),
    "dvc": ("DVC no-op (slowest of `dvc repro split` / `dvc status`), s", "<=", 1.5),
    "parallel": ("data stages, workers=1 / workers=2 time (smaller of ingest, balance)", ">=", 1.7),
    "memory": ("train stage peak RSS, GB", "<=", 2.5),
}


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
             "folder or zip), set BENCH_RAW, or put it at data/raw/chest_xray (see README).")


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
    """CPU seconds all processes of the machine have used so far (/proc/stat, not idle/iowait)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


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
    for name in ("ingest", "kermany", "validate", "balance", "split"):
        h.update((REPO / "stages" / f"{name}.py").read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Case: input pipeline vs ImageDataGenerator
# ----------------------------------------------------------------------------------------------
def case_input(prep: Path, sz: dict[str, Any]) -> dict[str, Any]:
    os.chdir(prep)
    import keras
    import tensorflow as tf

    from stages.config import load_params
    from stages.dataset import make_dataset, read_split, subset_rows

    params = load_params()
    aug, size, bs = params.train.augment, params.data.image_size, sz["batch"]
    rows = subset_rows(read_split(), "train")
    n = len(rows)

    ds = make_dataset(rows, size, bs, training=True, seed=1, augment=aug)
    t = time.perf_counter()
    for _ in ds:  # first epoch: decode + fill the cache (+ tracing)
        pass
    first_epoch = time.perf_counter() - t
    times = []
    for _ in range(sz["input_reps"]):
        t = time.perf_counter()
        for _ in ds:
            pass
        times.append(time.perf_counter() - t)
    ours = [n / x for x in times]

    # Reference: the straightforward tf.data + 4 Keras augmentation layers (one resampling per
    # geometric layer), on the same cached uint8 images.
    layers = keras.Sequential([
        keras.layers.RandomRotation(aug.rotation / 360.0, fill_mode="nearest", seed=1),
        keras.layers.RandomZoom(aug.zoom, fill_mode="nearest", seed=2),
        keras.layers.RandomTranslation(aug.shift, aug.shift, fill_mode="nearest", seed=3),
        keras.layers.RandomBrightness(aug.brightness, value_range=(0.0, 255.0), seed=4),
    ])
    plain = make_dataset(rows, size, bs, training=True, seed=1, augment=None)
    lds = plain.map(lambda x, y: (layers(x, training=True), y),
                    num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    for _ in plain:  # fill plain's cache
        pass
    it = iter(lds.repeat())
    next(it), next(it)
    layer_times = []
    for _ in range(sz["input_reps"]):
        t = time.perf_counter()
        for _ in range(sz["layers_batches"]):
            next(it)
        layer_times.append(time.perf_counter() - t)
    layer_ips = [sz["layers_batches"] * bs / x for x in layer_times]

    # Baseline: the paper-style legacy ImageDataGenerator on the same files (symlinked by label).
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    idg_dir = prep / "idg_train"
    shutil.rmtree(idg_dir, ignore_errors=True)
    for r in rows.itertuples():
        d = idg_dir / r.label
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{r.image_id}.png").symlink_to(prep / r.path)
    gen = ImageDataGenerator(
        rotation_range=aug.rotation, zoom_range=aug.zoom, width_shift_range=aug.shift,
        height_shift_range=aug.shift, brightness_range=(1 - aug.brightness, 1 + aug.brightness),
    )
    idg: dict[str, list[float]] = {}
    for mode in ("rgb", "grayscale"):  # rgb: the paper's default; grayscale: same channels as ours
        flow = gen.flow_from_directory(idg_dir, target_size=(size, size), color_mode=mode,
                                       batch_size=bs, class_mode="binary", seed=1)
        next(flow), next(flow)
        idg[mode] = []
        for _ in range(sz["input_reps"]):
            t = time.perf_counter()
            for _ in range(sz["idg_batches"]):
                next(flow)
            idg[mode].append(sz["idg_batches"] * bs / (time.perf_counter() - t))

    ratio = statistics.median(ours) / statistics.median(idg["rgb"])
    return {
        "value": ratio,
        "summary": (f"ours {statistics.median(ours):.0f} img/s vs ImageDataGenerator "
                    f"{statistics.median(idg['rgb']):.0f} (rgb) / "
                    f"{statistics.median(idg['grayscale']):.0f} (grayscale) img/s; "
                    f"vs grayscale {statistics.median(ours) / statistics.median(idg['grayscale']):.1f}x; "
                    f"4-layer reference {statistics.median(layer_ips):.0f} img/s"),
        "images": n, "image_size": size, "batch_size": bs,
        "ours_img_s": spread(ours), "first_epoch_s": round(first_epoch, 2),
        "idg_rgb_img_s": spread(idg["rgb"]), "idg_grayscale_img_s": spread(idg["grayscale"]),
        "ratio_vs_idg_grayscale": statistics.median(ours) / statistics.median(idg["grayscale"]),
        "keras_4_layers_img_s": spread(layer_ips),
    }


# ----------------------------------------------------------------------------------------------
# Case: train-step overhead of the input pipeline
# ----------------------------------------------------------------------------------------------
def _model(backbone: str, size: int):
    import keras

    from stages.config import ModelParams
    from stages.model import build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelParams(backbone=backbone, weights="none", trainable_layers=30),
                        size, None)
    model.compile(optimizer=keras.optimizers.Adam(2e-6), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model


def case_step(prep: Path, sz: dict[str, Any]) -> dict[str, Any]:
    os.chdir(prep)
    import numpy as np
    import tensorflow as tf

    from stages.config import load_params
    from stages.dataset import make_dataset, read_split, subset_rows

    params = load_params()
    size, bs, steps = sz["step_size"], sz["batch"], sz["step_steps"]
    assert size == params.data.image_size
    rows = subset_rows(read_split(), "train")
    real = make_dataset(rows, size, bs, training=True, seed=1, augment=params.train.augment)
    for _ in real:  # the cache is filled once per training run; steady state is what repeats
        pass
    real = real.repeat()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (bs, size, size, 1)).astype("float32"))
    y = tf.constant(rng.integers(0, 2, (bs, 1)).astype("float32"))
    mem = tf.data.Dataset.from_tensors((x, y)).repeat()

    import keras

    class StepTimes(keras.callbacks.Callback):
        """Wall time of each train step (the batch is fetched inside the step function)."""

        def __init__(self, into: list[float]) -> None:
            super().__init__()
            self.into = into

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.into.append(time.perf_counter() - self.t)

    model = _model(sz["step_backbone"], size)
    model.fit(mem, steps_per_epoch=2, epochs=1, verbose=0)  # trace
    model.fit(real, steps_per_epoch=2, epochs=1, verbose=0)
    # Many short fits, alternating real/in-memory, each step timed: TF on this 2-vCPU VM runs the
    # same step either at ~4.0 or ~5.1 s for a whole fit() call, whatever the input (seen with
    # in-memory noise, an in-memory real batch and the real pipeline alike); long alternating
    # fits compared by their minimum once reported the in-memory input 1.3x *slower*. Medians of
    # per-step times over many alternations are what both inputs share.
    t_real: list[float] = []
    t_mem: list[float] = []
    first_real: list[float] = []
    for _ in range(sz["step_rounds"]):
        for ds, acc in ((real, t_real), (mem, t_mem)):
            steps_of_fit: list[float] = []
            model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0,
                      callbacks=[StepTimes(steps_of_fit)])
            if ds is real:
                first_real.append(steps_of_fit[0])
            acc.extend(steps_of_fit[1:])  # steady state; the first step refills the shuffle buffer
    med_real, med_mem = statistics.median(t_real), statistics.median(t_mem)
    return {
        "value": med_real / med_mem,
        "summary": (f"{sz['step_backbone']} {size} px batch {bs}: median {med_real:.3f} s/step real "
                    f"input vs {med_mem:.3f} s/step in-memory ({bs / med_mem:.1f} img/s); "
                    f"{len(t_real)} + {len(t_mem)} steps in {sz['step_rounds']} alternations"),
        "backbone": sz["step_backbone"], "image_size": size, "batch_size": bs,
        "steps_per_fit": steps, "fits_each": sz["step_rounds"],
        "s_per_step_real": spread(t_real), "s_per_step_memory": spread(t_mem),
        "ratio_of_minimums": min(t_real) / min(t_mem),
        "first_step_of_epoch_real_s": spread(first_real),
    }


# ----------------------------------------------------------------------------------------------
# Case: peak memory of the train stage
# ----------------------------------------------------------------------------------------------
def case_memory(prep: Path, sz: dict[str, Any]) -> dict[str, Any]:
    os.chdir(prep)
    from stages.config import load_params
    from stages.dataset import make_dataset, read_split, subset_rows

    params = load_params()
    size, bs = sz["mem_size"], sz["batch"]
    assert size == params.data.image_size
    df = read_split()
    train_rows, val_rows = subset_rows(df, "train"), subset_rows(df, "val")
    train = make_dataset(train_rows, size, bs, training=True, seed=1,
                         augment=params.train.augment)
    val = make_dataset(val_rows, size, bs, training=False)
    for ds in (train, val):  # the whole cache, as after the first epoch
        for _ in ds:
            pass
    after_cache = rss_gb()
    model = _model(sz["mem_backbone"], size)
    t = time.perf_counter()
    model.fit(train, steps_per_epoch=sz["mem_steps"], epochs=1, validation_data=val,
              validation_steps=2, verbose=0)
    fit_s = time.perf_counter() - t
    peak = rss_gb()
    return {
        "value": peak,
        "summary": (f"{len(train_rows)} train + {len(val_rows)} val images cached at {size} px, "
                    f"{sz['mem_backbone']} batch {bs}, {sz['mem_steps']} steps: peak RSS "
                    f"{peak:.2f} GB (after caching, before the model: {after_cache:.2f} GB)"),
        "peak_rss_gb": round(peak, 3), "rss_after_cache_gb": round(after_cache, 3),
        "train_images": len(train_rows), "val_images": len(val_rows), "image_size": size,
        "batch_size": bs, "backbone": sz["mem_backbone"], "steps": sz["mem_steps"],
        "fit_s": round(fit_s, 1),
    }


# ----------------------------------------------------------------------------------------------
# Case: DVC no-op
# ----------------------------------------------------------------------------------------------
def case_dvc(work: Path, raw: Path, sz: dict[str, Any], quick: bool) -> dict[str, Any]:
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


# ----------------------------------------------------------------------------------------------
# Case: parallel data stages
# ----------------------------------------------------------------------------------------------
def case_parallel(work: Path, raw: Path, sz: dict[str, Any]) -> dict[str, Any]:
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


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) * 1024 / 2**30, 1)
    except OSError:
        pass
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
    if case in ("input", "step", "memory"):
        res = {"input": case_input, "step": case_step, "memory": case_memory}[case](
            work / "prep", sz)
    elif case == "dvc":
        res = case_dvc(work, raw, sz, args.quick)
    else:
        res = case_parallel(work, raw, sz)
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
    if any(c in ("input", "step", "memory") for c in cases):
        t = time.perf_counter()
        prepare(work, raw, sz)
        print(f"  prepared data stages in {work / 'prep'} ({time.perf_counter() - t:.0f} s)")

    results: dict[str, Any] = {}
    for case in cases:
        print(f"- {case} ...", flush=True)
        res = run_case(case, args)
        status, ratio = verdict(case, res.get("value"))
        desc, op, target = GOALS[case]
        res.update(goal=f"{desc} {op} {target}", status=status,
                   ratio_to_goal=None if ratio is None else round(ratio, 3))
        # Another process holding a core makes timing goals unreliable (speedups, overheads).
        res["contended"] = (res.get("other_processes_cores") or 0.0) > CONTENDED_CORES
        results[case] = res
        if status == "ERROR":
            print(f"  {case:9s} ERROR {res['error']}")
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
