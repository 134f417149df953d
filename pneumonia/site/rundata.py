"""A trained run's data folder, as the measurements (`site adapt-study`, `site check-study`,
`site check --reference`) read it: DIR/split.csv (columns path, subset train/val/test, ...) and
the images its paths name (`data/images/...`, relative to DIR); and the CPU a figure ran on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def images(data: Path, frame: pd.DataFrame, size: int) -> np.ndarray:
    from pneumonia.inference.sources import to_input

    def where(p: str) -> Path:
        rel = Path(p)
        return data / (Path(*rel.parts[1:]) if rel.parts and rel.parts[0] == "data" else rel)

    return np.stack([to_input(where(p).read_bytes(), size) for p in frame["path"]])

