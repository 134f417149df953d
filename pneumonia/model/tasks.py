"""What the model is asked: `task: binary` (the paper: NORMAL vs PNEUMONIA, one sigmoid) or
`task: three_class` (normal / bacterial / viral pneumonia, a softmax over three).

Every consumer of a model's output goes through this module, so binary tooling keeps working on
a three-class model: its P(PNEUMONIA) is P(bacteria) + P(virus) (`pneumonia_probability`), and
which task a saved model answers is read from its output width (`task_of`), never guessed from
params.yaml (a model file may come from anywhere).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from pneumonia.paths import CLASSES, LABELS

Task = Literal["binary", "three_class"]
TASKS: tuple[Task, ...] = ("binary", "three_class")


def n_outputs(task: Task) -> int:
    """Width of the model's last layer: 1 (sigmoid) or 3 (softmax)."""
    return 1 if task == "binary" else len(CLASSES)


def class_names(task: Task) -> tuple[str, ...]:
    """The target's names in output order: (NORMAL, PNEUMONIA) or (normal, bacteria, virus)."""
    return LABELS if task == "binary" else CLASSES


def loss(task: Task) -> str:
    """Keras loss of the task's head."""
    return "binary_crossentropy" if task == "binary" else "categorical_crossentropy"


def target_indices(rows: Any, task: Task) -> np.ndarray:
    """Class index of each split.csv row: label (0 NORMAL, 1 PNEUMONIA) or class (0 normal,
    1 bacteria, 2 virus). ValueError naming an unknown value."""
    column, names = ("label", LABELS) if task == "binary" else ("class", CLASSES)
    values = [str(v) for v in rows[column]]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"column `{column}` holds {unknown}; expected {list(names)}")
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[v] for v in values], dtype=np.int64)


def targets(rows: Any, task: Task) -> np.ndarray:
    """float32 training targets: (N, 1) 0/1 for the sigmoid, (N, 3) one-hot for the softmax."""
    idx = target_indices(rows, task)
    if task == "binary":
        return idx.astype(np.float32).reshape(-1, 1)
    return np.eye(len(CLASSES), dtype=np.float32)[idx]


def task_of(model: Any) -> Task:
    """The task a Keras model answers, from its output width (1 or 3)."""
    width = model.output_shape[-1]
    if width == 1:
        return "binary"
    if width == len(CLASSES):
        return "three_class"
    raise ValueError(f"a model with {width} outputs is neither binary (1) nor three-class (3)")


def class_probabilities(output: Any) -> np.ndarray:
    """(N, K) float64 from a model's raw output: (N, 1) P(PNEUMONIA) -> [P(NORMAL),
    P(PNEUMONIA)]; (N, 3) softmax -> as is."""
    out = np.asarray(output, dtype=np.float64)
    out = out.reshape(len(out), -1)
    if out.shape[1] == 1:
        return np.concatenate([1.0 - out, out], axis=1)
    return out


def pneumonia_probability(output: Any) -> np.ndarray:
    """P(PNEUMONIA) per image from a model's raw output: the sigmoid, or bacteria + virus."""
    out = np.asarray(output, dtype=np.float64)
    out = out.reshape(len(out), -1)
    return out[:, 0] if out.shape[1] == 1 else out[:, 1:].sum(axis=1)
