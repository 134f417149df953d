"""DVC stage `split`: Carve a validation set out of the training images, grouped by patient.

Reads data/manifest.csv, data/balanced.csv; writes data/split.csv, metrics/split.json.
The work is done by `pneumonia.dataset.split`; this entry point reads params.yaml and runs it.
"""

from pneumonia.dataset import split
from pneumonia.params import load_params
from pneumonia.stage_runner import run_stage


def main() -> None:
    run_stage(lambda: split.run(load_params()), "split")


if __name__ == "__main__":
    main()
