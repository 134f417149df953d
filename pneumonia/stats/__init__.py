"""Pure statistics for the evaluation of a pneumonia classifier (no file I/O, no TensorFlow/MLflow).

Modules:

- ``bootstrap``: patient-grouped (cluster) bootstrap, vectorised over all resamples; weighted
  accuracy, per-class precision/recall/F1, sensitivity, specificity, ROC AUC and average
  precision; ``metric_intervals`` / ``flat_intervals`` and the paired ``paired_deltas``; the
  undefined-resample rule (``guarded_interval``) and the bootstrap p-value.
- ``significance``: paired tests of two models on the same images (exact McNemar, fast DeLong),
  the paired verdict word, and Holm's correction of a family of p-values.
- ``table3``: the confusion matrix implied by the paper's Table III, intervals for its cells, and
  the comparison of a run with Table III (the difference run - paper with both uncertainties)
  and with the Kaggle baseline.
- ``seeds``: inference across training seeds (ablation arms): Welch-Satterthwaite contrasts of
  arm means with the runs' shared test-set term, t-intervals per arm, seeds needed (power).
- ``calibration``: Brier score, expected calibration error, reliability and precision-recall
  tables, and the choice of a decision threshold on validation data.
- ``multiclass``: three-class (normal / bacteria / virus) metrics, bacterial-vs-viral accuracy, and
  the binary view's PNEUMONIA recall per cause.
- ``conformal``: split conformal prediction sets (calibration, sets, coverage, referral rate,
  cross-fitted coverage, the risk-coverage curve).
"""
