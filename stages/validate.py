"""DVC stage `validate`: Check the manifest with a great-expectations suite; report leakage.

Reads data/manifest.csv; writes metrics/validation.json, metrics/validation.md.
The work is done by `pneumonia.dataset.validate`; this entry point reads params.yaml and runs it.
"""

from pneumonia.dataset import validate
from pneumonia.params import load_params
from pneumonia.stage_runner import run_stage


def main() -> None:
    run_stage(lambda: validate.run(load_params()), "validate")


if __name__ == "__main__":
    main()
