"""Benchmark case `rest`: latency of one image through the served model (`mlflow models serve`,
the registry's champion, `--env-manager local`, one worker) on 127.0.0.1: POST /invocations
with one base64 JPEG from data.raw's test set (the first by name), measured by the client (JSON encoding, HTTP,
decoding + resizing with ingest's code, the forward pass). p50 and p95 after two warm-up
requests. DenseNet201 at 224 px, random weights. Goal: p95 <= 0.5 s.

The server is started and stopped with tests/inference/servekit.py (the serving test's helper).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import bench_model

GOAL = ("REST p95 latency, one image, s", "<=", 0.5)
NEEDS = "work"


def measure(work: Path, raw: Path, sz: dict[str, Any], quick: bool) -> dict[str, Any]:
    import mlflow
    import numpy as np

    from pneumonia.inference.pyfunc import log_model
    from tests.inference.servekit import payload, post, served

    size = sz["image_size"]
    backbone = "densenet121" if quick else "densenet201"
    store = work / "rest"
    store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name("bench") or None
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(
        "bench", artifact_location=(store / "mlruns").as_uri())
    model_file = store / "model.keras"
    bench_model(backbone, size).save(model_file)
    with mlflow.start_run(experiment_id=exp_id):
        model_uri = log_model(model_file, 0.5)
    client = mlflow.MlflowClient()
    mv = mlflow.register_model(model_uri, "bench")
    client.set_registered_model_alias("bench", "champion", mv.version)

    image = min(p for p in (Path(raw) / "test").rglob("*.jpeg"))
    body = payload([image.read_bytes()])
    n = 5 if quick else 50
    times: list[float] = []
    with served("models:/bench@champion", uri, store / "serve.log") as url:
        for i in range(n + 2):
            t = time.perf_counter()
            status, answer = post(url, body)
            dt = time.perf_counter() - t
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {answer}")
            if i >= 2:
                times.append(dt)
    p50 = statistics.median(times)
    p95 = float(np.percentile(times, 95))
    return {
        "value": p95,
        "summary": (f"{backbone} {size} px, one {image.stat().st_size // 1024} kB JPEG per "
                    f"request, {n} requests: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"),
        "p50_s": p50, "p95_s": p95, "requests": n, "image": str(image),
        "backbone": backbone, "image_size": size,
    }
