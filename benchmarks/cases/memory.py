"""Benchmark case `memory`: peak RSS (ru_maxrss) of the train stage's work: the full train+val sets
cached through pneumonia.model.inputs, then real training steps of the real model. Goal <= 2.5 GB.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    bench_model,
    rss_gb,
)

GOAL = ("train stage peak RSS, GB", "<=", 2.5)
NEEDS = "prep"  # "prep": the data stages prepared once; "work": a scratch folder


# peak memory of the train stage
def measure(work: Path, raw: Path, sz: dict[str, Any], quick: bool) -> dict[str, Any]:
    prep = work / "prep"
    os.chdir(prep)
    from pneumonia.model.inputs import make_dataset, read_split, subset_rows
    from pneumonia.params import load_params

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
    model = bench_model(sz["mem_backbone"], size)
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
