"""The pull-request workflow's script (.github/scripts/metrics-diff.sh), run for real against the
local S3 remote: a fresh checkout of the newer revision, the remote configured from environment
variables (as from CI secrets), the markdown diff against the older revision."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumonia.team.servers import BUCKET, CREDENTIALS
from tests.team.conftest import ROOT, TeamProject, clean_env, run

SCRIPT = ROOT / ".github/scripts/metrics-diff.sh"


@pytest.mark.slow
def test_script_posts_metrics_diff(team_project: TeamProject, tmp_path: Path) -> None:
    assert team_project.servers.s3 is not None
    repo = tmp_path / "ci"
    run(["git", "clone", "-q", str(team_project.repo), str(repo)], tmp_path)
    # CI's checkout: no .dvc/config.local, no cache; the secrets come as environment variables.
    assert not (repo / ".dvc/config.local").exists()
    env = clean_env(
        BASE=team_project.v1,
        DVC_REMOTE_URL=f"s3://{BUCKET}/dvcstore",
        DVC_REMOTE_ENDPOINT=team_project.servers.s3.url,
        **CREDENTIALS,
    )
    proc = run(["bash", str(SCRIPT)], repo, env)
    report = (repo / "report.md").read_text()
    assert f"vs `{team_project.v1}`" in report
    assert "metrics/evaluate.json" in report and "| Path" in report  # dvc's markdown table
    assert "accuracy" in report
    assert "| params.yaml" in report and "lr" in report  # the one param that changed
    # pneumonia compare's paired report of the two revisions' test predictions
    assert "## Paired comparison" in report and "McNemar" in report, report
    html = (repo / "dvc_plots/index.html").read_text()
    assert team_project.v1 in html  # the base revision's curves, streamed from the remote
    assert (repo / "metrics/train_history.csv").is_file(), proc.stdout  # pulled
