"""Taking the model to a new hospital (a "site"): recalibrate it on a few labelled site images,
predict and serve with that calibration, and measure what it buys (docs/new-site.md).

- ``names``: site names and their registry alias ``site-NAME``.
- ``thresholds``: the decision threshold fitted on labelled site images (accuracy, Youden, a
  target sensitivity).
- ``quantiles``: the conformal quantile (LAC as evaluate; per class / Mondrian; training-
  conditional at confidence 1 - delta) and the smallest calibration set each needs.
- ``temperature``: temperature scaling of P(PNEUMONIA).
- ``fit``: all of the above on one labelled set, as one calibration record.
- ``draws``: patient-grouped draws of k labelled images (a patient's images stay together).
- ``labelled``: a labelled site set read in any layout ingest reads; bad input refused.
- ``registry``: a site version of the same weights, alias ``site-NAME``; ``champion`` untouched.
- ``check``: ``pneumonia site check`` (no labels: MMD shift test on embeddings, Saerens EM
  prevalence); ``check_study``: ``site check-study``'s patient-grouped draws, its false alarms
  and its power against each robustness shift (metrics/site-check.md).
- ``adapt``: ``pneumonia site adapt`` (AdaBN) and ``adapt_study`` (what it does, measured).
- ``rundata``: a trained run's data folder (split.csv and images) as the measurements read it.
- ``calibrate``: ``pneumonia site calibrate``; ``study``: ``pneumonia site study``.
The options of every ``pneumonia site`` command: pneumonia/commands/site.py.
"""
