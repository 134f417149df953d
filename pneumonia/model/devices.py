"""Where training runs: the distribution strategy and precision chosen from the devices that are
visible (never hard-coded), and the seeds / op determinism of a run."""

from __future__ import annotations

import logging
import os
from typing import Any

from pneumonia.params import Params

log = logging.getLogger(__name__)


def select_device(params: Params) -> tuple[Any, str, str, int]:
    """Choose the distribution strategy and precision from what is visible.

    Returns (strategy or None, device description, precision, replicas). Never hard-codes a
    device: a GPU machine trains on its GPU(s), any other on the CPU.
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        try:
            names.append(
                tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            )
        except (ValueError, RuntimeError):
            names.append(gpu.name)
    mp = params.train.mixed_precision
    use_mp = mp == "on" or (mp == "auto" and bool(gpus))
    if mp == "on" and not gpus:
        log.warning("train.mixed_precision is `on` without a GPU: float16 on CPU is slow")
    precision = "mixed_float16" if use_mp else "float32"
    if mp == "bfloat16":
        precision = "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(precision)

    if gpus:
        device = f"{len(gpus)} x GPU ({', '.join(names)})"
    else:
        device = f"CPU ({os.cpu_count()} cores)"
    strategy = None
    devices = None  # MirroredStrategy's default: every GPU
    if not gpus and params.train.cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * params.train.cpu_devices
        )
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        device += f", {len(devices)} logical devices"
    dist = params.train.distribute
    if dist == "mirrored" or (dist == "auto" and len(devices or gpus) > 1):
        strategy = tf.distribute.MirroredStrategy(devices)
    replicas = strategy.num_replicas_in_sync if strategy else 1
    return strategy, device, precision, replicas


def configure_determinism(params: Params) -> None:
    """Seed Python, NumPy and TensorFlow (always); with `train.deterministic`, also make every
    TensorFlow op deterministic, so the same seeded run repeats exactly on this machine. (The
    input pipeline is deterministic in any case: ordered tf.data, stateless augmentation.)"""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(params.train.seed)
    if params.train.deterministic:
        tf.config.experimental.enable_op_determinism()
        log.info("train.deterministic: TensorFlow op determinism on")
