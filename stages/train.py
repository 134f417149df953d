"""DVC stage `train`: Fine-tune the classifier (DenseNet201 by default), tracked in MLflow.

Reads data/split.csv (+ the images it lists); writes models/model.keras, models/mlflow_run.json,
metrics/train.json, metrics/train_history.csv.
The work is done by `pneumonia.model.train`; this entry point reads params.yaml and runs it.
"""

from pneumonia.model import train
from pneumonia.params import load_params
from pneumonia.stage_runner import run_stage


def main() -> None:
    run_stage(lambda: train.run(load_params()), "train")


if __name__ == "__main__":
    main()
