"""DVC stage `balance`: Generate NORMAL training images with Augmentor up to `balance.target_normal`.

Reads data/manifest.csv, metrics/validation.json; writes data/balanced/, data/balanced.csv,
metrics/balance.json.
The work is done by `pneumonia.dataset.balance`; this entry point reads params.yaml and runs it.
"""

from pneumonia.dataset import balance
from pneumonia.params import load_params
from pneumonia.stage_runner import run_stage


def main() -> None:
    run_stage(lambda: balance.run(load_params()), "balance")


if __name__ == "__main__":
    main()
