"""`pneumonia ablation`: the paper's open question — the backbone or the balancing? — as a grid of
queued DVC experiments, one per arm (backbone x balancing method x BatchNorm handling) and seed.

The grid lives in params.yaml (`ablation:`); a preset (pneumonia.experiments.presets) adds the
overrides that make a whole grid affordable (`cpu`: the CPU recipe, 2 cores, no downloads) or
keeps params.yaml as it is (`paper`). Each run is `dvc exp run --queue -n abl-<arm>-s<seed> -S
...` (pneumonia.experiments.grid); `pneumonia report` then reads the finished experiments (see
`pneumonia.experiments.report`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from pneumonia.experiments.presets import preset
from pneumonia.params import AblationParams

PREFIX = "abl"


@dataclass(frozen=True)
class Run:
    """One experiment of the grid."""

    backbone: str
    balance_method: str
    freeze_batchnorm: bool
    seed: int

    @property
    def arm(self) -> str:
        """Same spelling as `pneumonia.params.arm_of` (the MLflow `arm` tag)."""
        bn = "bn-frozen" if self.freeze_batchnorm else "bn-trained"
        return f"{self.backbone}/{self.balance_method}/{bn}"

    @property
    def name(self) -> str:
        """DVC experiment name (a valid git ref component)."""
        return f"{PREFIX}-{self.arm.replace('/', '-')}-s{self.seed}"

    def overrides(self, preset_name: str) -> dict[str, str]:
        return {
            **preset(preset_name),
            "model.backbone": self.backbone,
            "balance.method": self.balance_method,
            "model.freeze_batchnorm": str(self.freeze_batchnorm).lower(),
            "train.seed": str(self.seed),
        }


def grid(p: AblationParams) -> list[Run]:
    """Every arm x seed of the params' grid, in a stable order."""
    return [
        Run(backbone, method, bn, seed)
        for backbone, method, bn, seed in itertools.product(
            p.backbones, p.balance_methods, p.freeze_batchnorm, p.seeds
        )
    ]


