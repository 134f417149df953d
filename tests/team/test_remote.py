"""The DVC remote on S3-compatible storage (moto's S3 API server): push, a teammate's clone pulls
and reproduces nothing, an older revision checks out its own model; failures name the remote."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest

from pneumonia.team.servers import S3Server
from tests.team.conftest import (
    TeamProject,
    clean_env,
    clone,
    configure_remote,
    dvc,
    git,
    lock_hash,
    run,
)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_clone_pulls_and_reproduces_nothing(team_project: TeamProject, tmp_path: Path) -> None:
    repo = clone(team_project, tmp_path / "clone")
    assert not (repo / "models/model.keras").exists()  # data and models are not in git
    dvc(repo, "pull")
    assert md5(repo / "models/model.keras") == lock_hash(repo, "train", "models/model.keras")
    status = dvc(repo, "status").stdout
    assert "up to date" in status, status
    again = dvc(repo, "repro").stdout
    assert "Running stage" not in again, again


@pytest.mark.slow
def test_older_revision_checks_out_its_own_model(
    team_project: TeamProject, tmp_path: Path
) -> None:
    repo = clone(team_project, tmp_path / "clone")
    dvc(repo, "pull")
    new_model = lock_hash(repo, "train", "models/model.keras")
    git(repo, "checkout", "-q", team_project.v1)
    old_model = lock_hash(repo, "train", "models/model.keras")
    assert old_model != new_model  # lr changed between v1 and v2: another model
    dvc(repo, "pull")  # fetches v1's model from the remote, checks it out
    assert md5(repo / "models/model.keras") == old_model
    assert "up to date" in dvc(repo, "status").stdout


def test_unreachable_remote_names_remote_and_fix(tmp_path: Path) -> None:
    repo = _scratch_repo(tmp_path)
    with_endpoint = configure_remote_to(repo, "http://127.0.0.1:9")  # discard port: nothing there
    proc = run([sys.executable, "-m", "pneumonia.team.remote", "push"], repo, check=False,
               env=with_endpoint)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "DVC remote 'storage'" in last and "unreachable" in last, proc.stderr
    assert "dvc remote modify storage endpointurl" in last
    assert "Traceback" not in proc.stderr


def test_rejected_credentials_name_remote_and_fix(tmp_path: Path) -> None:
    # A second moto server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0).
    server = S3Server(tmp_path / "auth.log")
    try:  # stopped also when it fails to start (registered before its start-up wait)
        os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        try:
            server.start()
        finally:
            del os.environ["INITIAL_NO_AUTH_ACTION_COUNT"]
        repo = _scratch_repo(tmp_path)
        env = configure_remote_to(repo, server.url)
        proc = run([sys.executable, "-m", "pneumonia.team.remote", "push"], repo, check=False,
                   env=env)
    finally:
        server.stop()
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "DVC remote 'storage'" in last and "credentials" in last, proc.stderr
    assert "dvc remote modify --local storage access_key_id" in last


def test_dvc_missing_from_path_is_a_clear_error(tmp_path: Path) -> None:
    path = "/usr/bin:/bin"
    if shutil.which("dvc", path=path):
        pytest.skip(f"dvc is installed in {path}")
    proc = run([sys.executable, "-m", "pneumonia.team.remote", "pull"], tmp_path, check=False,
               env={"PATH": path, "HOME": str(tmp_path)})
    assert proc.returncode == 2
    assert "ERROR: `dvc` is not on PATH" in proc.stderr and "make install" in proc.stderr
    assert "Traceback" not in proc.stderr


def _scratch_repo(tmp_path: Path) -> Path:
    """A git + DVC repo with one tracked file (what is pushed does not matter here)."""
    repo = tmp_path / "scratch"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    (repo / "data.txt").write_text("x\n")
    dvc(repo, "add", "-q", "data.txt")
    return repo


def configure_remote_to(repo: Path, endpoint: str) -> dict[str, str]:
    configure_remote(repo, endpoint)
    # The wrapper runs from the repo; it must import this worktree's package.
    return clean_env(PYTHONPATH=str(Path(__file__).resolve().parents[2]))
