"""Using the trained model: `pneumonia predict` and `pneumonia explain`, the served MLflow model.

- ``sources``: command-line paths (files, folders, .zip archives) expanded into images to read;
  the bytes -> model input conversion every user of the model shares (PNG/JPEG/DICOM, decoded
  exactly as ingest does).
- ``loading``: which model to use (`models/model.keras`, `runs:/...`, `models:/NAME@ALIAS`, the
  registry's champion by default) and its decision threshold.
- ``predict``: the `pneumonia predict` command (decoding overlapped with the forward pass).
- ``pyfunc``: the MLflow pyfunc model (image bytes in, P(PNEUMONIA) out) that train logs and
  `mlflow models serve` serves.
- ``gradcam``: Grad-CAM heatmaps and overlays (evaluate writes them for test cases); ``explain``:
  the `pneumonia explain` command.

The champion/challenger gate lives in ``pneumonia.registry``.
"""
