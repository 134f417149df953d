"""Pure statistics for the evaluation of a pneumonia classifier (no file I/O, no TensorFlow/MLflow).

Modules:

- ``bootstrap``: patient-grouped (cluster) bootstrap, vectorised over all resamples; weighted
  accuracy, per-class precision/recall/F1, sensitivity, specificity, ROC AUC and average
  precision; ``metric_intervals`` / ``flat_intervals`` and the paired ``paired_deltas``.
- ``significance``: paired tests of two models on the same images (exact McNemar, fast DeLong),
  the paired verdict word, and the unpaired difference of two independent proportions.
- ``table3``: the confusion matrix implied by the paper's Table III, intervals for its cells, and
  the comparison of a run with Table III and with the Kaggle baseline.
- ``calibration``: Brier score, expected calibration error, reliability and precision-recall
  tables, and the choice of a decision threshold on validation data.
- ``multiclass``: three-class (normal / bacteria / virus) metrics, bacterial-vs-viral accuracy, and
  the binary view's PNEUMONIA recall per cause.
- ``conformal``: split conformal prediction sets (calibration, sets, coverage, referral rate,
  cross-fitted coverage, the risk-coverage curve).
"""
