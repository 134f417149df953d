"""The Kermany 2018 chest X-ray dataset and the data stages' work.

`kermany` (where the dataset lies, its layout and file names), `images` (decoding to 8-bit
grayscale, resizing, PNG encoding), `ingest`, `validate` (great-expectations), `balance`
(Augmentor) and `split` (patient-grouped train/validation).

Stages import this file: an edit here re-runs them (dvc.yaml deps).
"""
