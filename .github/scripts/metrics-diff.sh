#!/usr/bin/env bash
# The pull-request report (markdown, $REPORT), the answer first: `pneumonia compare`'s paired
# comparison of the two revisions' test predictions (deltas with intervals and verdicts), then the
# headline `dvc metrics diff` (the stages' metrics files: pneumonia/paths.py HEADLINE), `dvc params
# diff`, and every other value's diff (metrics/details/, table3.json, registry.json) folded in a
# <details> block; `dvc plots diff` rendered to $PLOTS. Called by
# .github/workflows/metrics-diff.yml; runs the same on any machine with DVC and the remote's
# credentials (tests/team/test_metrics_diff.py runs it against a local S3 server,
# tests/experiments/test_metrics_report.py against a local remote).
#
# Environment:
#   BASE                    base revision, e.g. origin/main (required)
#   DVC_REMOTE              remote name (default: the repository's default remote, else storage)
#   DVC_REMOTE_URL          s3://bucket/path: sets the remote's URL (--local, never committed)
#   DVC_REMOTE_ENDPOINT     http(s)://host:port of S3-compatible storage (MinIO, Ceph, ...)
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the remote's credentials (--local)
#   REPORT (report.md), PLOTS (dvc_plots)     where to write
set -euo pipefail
: "${BASE:?set BASE to the base revision, e.g. origin/main}"
cd "$(git rev-parse --show-toplevel)"
export DVC_NO_ANALYTICS=1
REPORT=${REPORT:-report.md}
PLOTS=${PLOTS:-dvc_plots}
PYTHON=${PYTHON:-python3}

remote=${DVC_REMOTE:-$(dvc config core.remote 2>/dev/null || true)}
remote=${remote:-storage}
if [[ -n ${DVC_REMOTE_URL:-} ]]; then
  dvc remote add --local --force --default "$remote" "$DVC_REMOTE_URL"
fi
if [[ -n ${DVC_REMOTE_ENDPOINT:-} ]]; then
  dvc remote modify --local "$remote" endpointurl "$DVC_REMOTE_ENDPOINT"
fi
if [[ -n ${AWS_ACCESS_KEY_ID:-} ]]; then
  dvc remote modify --local "$remote" access_key_id "$AWS_ACCESS_KEY_ID"
  dvc remote modify --local "$remote" secret_access_key "${AWS_SECRET_ACCESS_KEY:?}"
fi

# Metrics and the test-set plots are in git (cache: false). The training curves
# (metrics/train_history.csv) are in the DVC cache: pull this revision's; `dvc plots diff` reads
# the base revision's from the remote itself. The wrapper names the remote and the fix on failure.
"$PYTHON" -m pneumonia.team.remote pull --remote "$remote" metrics/train_history.csv

{
  echo "## Model changes vs \`$BASE\`"
  echo
} > "$REPORT"
# Is the change real or noise? The paired comparison of both revisions' test predictions
# (metrics/predictions.csv, in git): deltas with patient-bootstrap intervals, McNemar, DeLong.
# It needs only numpy/pandas/scipy/statsmodels (no TensorFlow); a revision without predictions
# gets one line saying so instead of failing the report.
if ! "$PYTHON" -m pneumonia compare "$BASE" HEAD >> "$REPORT" 2> compare.err; then
  { echo "_pneumonia compare could not run:_ $(tail -n 1 compare.err)"; echo; } >> "$REPORT"
fi
rm -f compare.err
# Every other value DVC can diff, from git: the stages' complete records and Table III's cells
# (not validate's: a cached out, outside git).
mapfile -t full < <(git ls-files -- metrics/details metrics/table3.json metrics/registry.json \
  | grep '\.json$' || true)
{
  echo
  echo "### Headline metrics"
  dvc metrics diff "$BASE" --md --precision 4
  echo
  echo "### Params"
  dvc params diff "$BASE" --md
  echo
  if (( ${#full[@]} )); then
    echo "<details><summary>Every other value (${full[*]})</summary>"
    echo
    dvc metrics diff "$BASE" --md --precision 4 --targets "${full[@]}"
    echo
    echo "</details>"
    echo
  fi
  echo "Plots (confusion matrix, ROC, training curves): see the \`dvc-plots\` artifact of this run."
} >> "$REPORT"
dvc plots diff "$BASE" --out "$PLOTS" > /dev/null
echo "wrote $REPORT and $PLOTS/"
