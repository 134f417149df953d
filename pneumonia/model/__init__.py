"""The classifier: `network` (backbone + head, pretrained weights), `inputs` (split.csv to tf.data,
online augmentation) and `train` (the training run: callbacks, resume, device, MLflow).

Stages import this file: an edit here re-runs them (dvc.yaml deps).
"""
