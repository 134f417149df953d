"""Benchmark case `predict`: images/s of `pneumonia predict`'s pipeline (read files, decode and
resize with ingest's code in a thread pool, batches of 32 through the model) vs the same model's
forward pass on the same images already in memory (batches of 32). Goal >= 0.9.

The test set of the prepared data (data/images/test/**.png, the ingested images at the model's
size); DenseNet201 at 224 px with random weights (timings do not depend on the weights), loaded
from a .keras file as `pneumonia predict` loads it. Alternating rounds, medians. Also reported:
the command itself end to end (a fresh process: imports, model loading, CSV), and the pipeline
on the original JPEGs of data.raw's test/ folder (decoding + LANCZOS resizing, ingest's work done
per image; the shared copy's JPEGs are already 224 px, a Kaggle download's are ~2000 px).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.common import PY, bench_model, env, spread

GOAL = ("pneumonia predict pipeline img/s / forward pass on in-memory tensors", ">=", 0.9)
NEEDS = "prep"


def measure(work: Path, raw: Path, sz: dict[str, Any], quick: bool) -> dict[str, Any]:
    prep = work / "prep"
    os.chdir(prep)
    import keras
    import numpy as np

    from pneumonia.inference.predict import predict_items
    from pneumonia.inference.sources import expand, to_input

    size = sz["image_size"]
    backbone = "densenet121" if quick else "densenet201"
    model_file = work / f"predict_{backbone}_{size}.keras"
    bench_model(backbone, size).save(model_file)
    model = keras.saving.load_model(model_file, compile=False)
    items = expand([prep / "data/images/test"])
    n = len(items)
    x = np.stack([to_input(i.read(), size) for i in items])
    bs = 32

    def forward() -> float:
        t = time.perf_counter()
        for i in range(0, n, bs):
            model.predict_on_batch(x[i : i + bs])
        return n / (time.perf_counter() - t)

    def pipeline(its: list) -> float:
        t = time.perf_counter()
        results = list(predict_items(model, its, size, bs))
        assert not [r for r in results if r.error]
        return len(its) / (time.perf_counter() - t)

    forward()  # traces the full and the last, partial batch shapes
    rounds = 1 if quick else 3
    fwd, pipe = [], []
    for _ in range(rounds):
        pipe.append(pipeline(items))
        fwd.append(forward())
    med_fwd, med_pipe = statistics.median(fwd), statistics.median(pipe)

    raw_test = [p for p in sorted((Path(raw) / "test").rglob("*"))
                if p.suffix.lower() in (".jpeg", ".jpg", ".png")] if Path(raw).is_dir() else []
    raw_ips = pipeline(expand(raw_test)) if raw_test else None

    t = time.perf_counter()
    r = subprocess.run([PY, "-m", "pneumonia", "predict", str(prep / "data/images/test"),
                        "--model", str(model_file), "--out", str(work / "predict_cli.csv")],
                       cwd=prep, env=env(), capture_output=True, text=True, check=False)
    cli_s = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"pneumonia predict failed: {r.stderr[-2000:]}")
    return {
        "value": med_pipe / med_fwd,
        "summary": (f"{backbone} {size} px, {n} test images: predict pipeline {med_pipe:.1f} "
                    f"img/s vs forward pass in memory {med_fwd:.1f} img/s (median of {rounds}); "
                    f"the command end to end {cli_s:.1f} s = {n / cli_s:.1f} img/s incl. start-up"
                    + (f"; original JPEGs {raw_ips:.1f} img/s" if raw_ips else "")),
        "backbone": backbone, "image_size": size, "images": n, "batch_size": bs,
        "pipeline_img_s": spread(pipe), "forward_img_s": spread(fwd),
        "cli_end_to_end_s": round(cli_s, 2), "cli_img_s_incl_startup": round(n / cli_s, 2),
        "original_jpegs": {"images": len(raw_test), "pipeline_img_s": raw_ips},
    }
