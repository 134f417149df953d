"""Benchmark case `determinism`: what `train.deterministic: true` costs. Median train-step time of
the real model with TensorFlow op determinism on vs off (each in its own process: the switch is
process-wide and cannot be turned off again), and the seconds per epoch of the full train set
(6185 images) that implies.

Not one of `make bench`'s CASES: it measures a trade-off the user chooses, there is no goal to
meet (GOAL below is informative only). Run it alone:

    python -m benchmarks.cases.determinism                       # densenet201, 224 px, batch 32
    python -m benchmarks.cases.determinism --size 64 --backbone densenet121 --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import PY, env, spread

GOAL = ("train step time, op determinism on / off", "<=", 1.10)  # informative, not registered
NEEDS = "work"
TRAIN_IMAGES = 6185  # the full train subset (README, Data handling)


def _step_times(deterministic: bool, backbone: str, size: int, batch: int,
                steps: int) -> list[float]:
    """Per-step seconds of `steps` train steps (after 2 untimed ones), in this process."""
    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks.common import bench_model

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    times: list[float] = []

    class StepTimes(keras.callbacks.Callback):
        def on_train_batch_begin(self, b: int, logs: Any = None) -> None:
            self.t = time.perf_counter()

        def on_train_batch_end(self, b: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.t)

    model = bench_model(backbone, size)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 1)).astype("float32")
    y = rng.integers(0, 2, (batch, 1)).astype("float32")
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace, warm up
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[StepTimes()])
    return times


def measure(work: Path, raw: Path, sz: dict[str, Any], quick: bool) -> dict[str, Any]:
    backbone = sz.get("step_backbone", "densenet201")
    size, batch = sz.get("step_size", 224), sz.get("batch", 32)
    steps = 3 if quick else sz.get("determinism_steps", 6)
    result: dict[str, Any] = {"backbone": backbone, "image_size": size, "batch_size": batch}
    medians = {}
    for deterministic in (False, True, False, True):  # alternated: this VM's speed drifts
        code = ("import json, sys; from benchmarks.cases.determinism import _step_times; "
                f"print(json.dumps(_step_times({deterministic}, {backbone!r}, {size}, {batch}, "
                f"{steps})))")
        out = subprocess.run([PY, "-c", code], env=env(), capture_output=True, text=True,
                             check=True).stdout
        key = "on" if deterministic else "off"
        result.setdefault(f"s_per_step_{key}", []).extend(json.loads(out.splitlines()[-1]))
    for key in ("off", "on"):
        times = result[f"s_per_step_{key}"]
        medians[key] = statistics.median(times)
        result[f"s_per_step_{key}"] = spread(times)
        result[f"s_per_epoch_{key}"] = round(medians[key] * TRAIN_IMAGES / batch, 1)
    ratio = medians["on"] / medians["off"]
    result |= {
        "value": ratio,
        "summary": (f"{backbone} {size} px batch {batch}: median {medians['off']:.3f} s/step off, "
                    f"{medians['on']:.3f} s/step with op determinism ({ratio:.2f}x); a "
                    f"{TRAIN_IMAGES}-image epoch {result['s_per_epoch_off']:.0f} s -> "
                    f"{result['s_per_epoch_on']:.0f} s (compute only)"),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="densenet201")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    sz = {"step_backbone": args.backbone, "step_size": args.size, "batch": args.batch,
          "determinism_steps": args.steps}
    result = measure(Path("."), Path("."), sz, quick=False)
    print(result["summary"])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
