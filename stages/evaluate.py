"""DVC stage `evaluate`: The trained model on the official test set, beside the paper's Table III.

Reads models/model.keras, data/split.csv; writes metrics/evaluate.json, metrics/table3.*,
metrics/predictions.csv, confusion/ROC plots.
The work is done by `pneumonia.evaluation.evaluate`; this entry point reads params.yaml and runs it.
"""

from pneumonia.evaluation import evaluate
from pneumonia.params import load_params
from pneumonia.stage_runner import run_stage


def main() -> None:
    run_stage(lambda: evaluate.run(load_params()), "evaluate")


if __name__ == "__main__":
    main()
