"""A multi-worker cluster check: MultiWorkerMirroredStrategy across processes or machines.

    TF_CONFIG='{"cluster": {"worker": ["hostA:12345", "hostB:12345"]},
                "task": {"type": "worker", "index": 0}}' pneumonia team multiworker out.json

Run one process per machine (index 0, 1, ...), each with the same cluster list. Every worker
takes a few synchronised SGD steps on a tiny linear model, all-reducing the gradients over the
network, and writes its replica count, losses and final weights: identical weights on all workers
prove the cluster works (ports open, collectives reach every worker).

Why a custom loop and not the train stage: Keras 3.15's `Model.fit` fails under
MultiWorkerMirroredStrategy (first in its symbolic build, `Attempt to convert a value (PerReplica…)`,
then in its per-replica metric reduction; keras-team/keras#20585, reproduced here with TF 2.21).
"""

from __future__ import annotations

import json
import os
from typing import Any


class ClusterError(RuntimeError):
    """TF_CONFIG missing or malformed."""


def cluster_spec() -> dict[str, Any]:
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "null")
        return dict(config["cluster"]) | {"task": config["task"]}
    except (ValueError, TypeError, KeyError):
        raise ClusterError(
            "TF_CONFIG is not set to a JSON cluster spec: set it on every worker, e.g. "
            '{"cluster": {"worker": ["hostA:12345", "hostB:12345"]}, '
            '"task": {"type": "worker", "index": 0}}'
        ) from None


def run_check(steps: int = 3, batch_per_replica: int = 8) -> dict[str, Any]:
    """A few synchronised steps of y = x·w on every worker; returns this worker's view."""
    spec = cluster_spec()
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        w = tf.Variable(tf.zeros((4, 1)))
    x = tf.random.stateless_normal((steps * batch_per_replica * replicas, 4), seed=(1, 2))
    y = tf.reduce_sum(x, axis=1, keepdims=True)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_per_replica * replicas)
    dist = iter(strategy.experimental_distribute_dataset(ds))

    @tf.function
    def step(batch: Any) -> Any:
        def replica_step(xb: Any, yb: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((tf.matmul(xb, w) - yb) ** 2)
            grad = tape.gradient(loss, w)
            ctx = tf.distribute.get_replica_context()
            grad = ctx.all_reduce("MEAN", grad)  # over every worker
            w.assign_sub(0.1 * grad)
            return loss

        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce("MEAN", losses, axis=None)

    losses = [float(step(next(dist))) for _ in range(steps)]
    return {
        "task": spec["task"],
        "replicas": replicas,
        "losses": losses,
        "weights": w.numpy().ravel().tolist(),
    }
