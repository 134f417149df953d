"""A trained run's data folder, as the measurements (`site adapt-study`, `site check-study`,
`site check --reference`) read it: DIR/split.csv (columns path, subset train/val/test,
patient_id, source_image_id, ...) and the images its paths name (`data/images/...`, relative to
DIR)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.inference.sources import to_input


def where(data: Path, path: str) -> Path:
    """The file a split.csv path names, relative to DIR (a leading `data/` dropped)."""
    rel = Path(path)
    return data / (Path(*rel.parts[1:]) if rel.parts and rel.parts[0] == "data" else rel)


def originals(data: Path, subset: str) -> pd.DataFrame:
    """The rows of DIR/split.csv in `subset` that are original images (not made by balance)."""
    split = data / "split.csv"
    if not split.is_file():
        raise PipelineError(f"{data}: no split.csv there. Give the model's training data folder "
                            "(the workspace's data/, or a copy with split.csv and its images).")
    frame = pd.read_csv(split, dtype=str)
    rows = frame[(frame["subset"] == subset) & frame["source_image_id"].isna()]
    if rows.empty:
        raise PipelineError(f"{split}: no original images in subset {subset}")
    return rows.reset_index(drop=True)


def file_bytes(data: Path, frame: pd.DataFrame) -> list[bytes]:
    return [where(data, p).read_bytes() for p in frame["path"]]


def images(data: Path, frame: pd.DataFrame, size: int) -> np.ndarray:
    return np.stack([to_input(b, size) for b in file_bytes(data, frame)])
