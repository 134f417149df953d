"""Served model memory under concurrent clients (issue 35): peak RSS of `mlflow models serve`
(one worker, `--env-manager local`) while 8 clients at once each POST one 49-megapixel PNG
(7000 x 7000, 8-bit grayscale), for several `serve.max_concurrent_decodes` values, and the RSS a
few seconds after the last answer (is memory given back?).

Not in `make bench`'s CASES (no goal of its own; the figure is quoted in docs/reliability.md):

    python -m benchmarks.cases.serve_memory [--limits 8 2 1] [--clients 8] [--out FILE]

The model is a small CNN at 32 px (the decoding of the 49-MP image, not the network, is what
takes the memory). RSS is the server process tree's (psutil), sampled every 10 ms by the client.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

GB = 1e9


def _noise_png(side: int) -> bytes:
    """A `side` x `side` 8-bit PNG of diagonal bands: it compresses to a few hundred kB, like
    the review's 190 kB 49-MP PNG, and decodes to side² bytes of pixels."""
    import io

    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side]
    arr = ((x // 16 + y // 16) % 256).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr, "L").save(out, format="PNG", compress_level=9)
    return out.getvalue()


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _server_pid(port: int) -> int:
    import psutil

    for c in psutil.net_connections(kind="tcp"):
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
            return c.pid
    raise RuntimeError(f"no process listens on port {port}")


def measure(limit: int, clients: int, png: bytes, work: Path) -> dict[str, Any]:
    import mlflow

    from benchmarks.common import bench_model
    from pneumonia.inference.pyfunc import log_model
    from pneumonia.params import ServeParams
    from tests.inference.servekit import payload, post, served

    store = work / f"limit{limit}"
    store.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("bench", artifact_location=(store / "mlruns").as_uri())
    model_file = store / "model.keras"
    bench_model("small_cnn", 32).save(model_file)
    with mlflow.start_run(experiment_id=exp):
        model_uri = log_model(model_file, 0.5, max_request_mb=64.0,
                              serve=ServeParams(max_concurrent_decodes=limit))
    body = payload([png])
    with served(model_uri, uri, store / "serve.log", timeout=600) as url:  # a loaded machine
        port = int(url.rsplit(":", 1)[1])
        pid = _server_pid(port)
        post(url, payload([_small_png()]))  # warm-up: model loaded, graph traced
        time.sleep(1)
        idle = _tree_rss(pid)
        peak = {"rss": idle}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak["rss"] = max(peak["rss"], _tree_rss(pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            statuses = [s for s, _ in pool.map(lambda _: post(url, body, timeout=600),
                                                range(clients))]
        wall = time.perf_counter() - t0
        time.sleep(3)
        stop.set()
        sampler.join()
        after = _tree_rss(pid)
    return {"max_concurrent_decodes": limit, "clients": clients, "statuses": statuses,
            "idle_gb": round(idle / GB, 3), "peak_gb": round(peak["rss"] / GB, 3),
            "growth_gb": round((peak["rss"] - idle) / GB, 3),
            "after_3s_gb": round(after / GB, 3), "wall_s": round(wall, 1)}


def _small_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (64, 64), 90).save(out, format="PNG")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limits", type=int, nargs="+", default=[8, 2])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--side", type=int, default=7000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    png = _noise_png(args.side)
    print(f"image: {args.side} x {args.side} = {args.side ** 2 / 1e6:.0f} MP, "
          f"{len(png) / 1e3:.0f} kB PNG; {args.clients} concurrent clients")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for limit in args.limits:
            r = measure(limit, args.clients, png, Path(tmp))
            rows.append(r)
            print(f"max_concurrent_decodes {limit}: idle {r['idle_gb']:.2f} GB, peak "
                  f"{r['peak_gb']:.2f} GB (+{r['growth_gb']:.2f}), 3 s after "
                  f"{r['after_3s_gb']:.2f} GB, {r['wall_s']} s, HTTP {sorted(set(r['statuses']))}",
                  flush=True)
    doc = {"machine": machine(), "image_megapixels": args.side ** 2 / 1e6,
           "png_bytes": len(png), "runs": rows}
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
