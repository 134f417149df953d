"""Team-scale fixtures: real servers on 127.0.0.1 (moto S3 API, PostgreSQL from pgserver, an MLflow
tracking server), and one project pushed to the S3 remote at two revisions.

Every server runs in its own process group and is stopped by the fixture's finalizer (SIGTERM,
then SIGKILL), also when a test fails. Needs the `team` extra (skipped without it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytest.importorskip("moto", reason="needs the `team` extra: pip install -e '.[team]'")
pytest.importorskip("pgserver", reason="needs the `team` extra: pip install -e '.[team]'")
pytest.importorskip("dvc_s3", reason="needs the `team` extra: pip install -e '.[team]'")

from pneumonia.team.servers import BUCKET, CREDENTIALS, S3Server, TeamServers
from tests.pipeline.test_dvc import TINY, make_project, set_params  # TINY: 32 px, 2 epochs

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "team-test"


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without MLflow/DVC settings, this venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "AWS_"))}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)  # stages import the copy's own code (cwd), as for a user
    return env | extra


def run(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, check=False,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def dvc(repo: Path, *args: str, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "dvc", *args], repo, env, check)


def git(repo: Path, *args: str) -> str:
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], repo).stdout


def configure_remote(repo: Path, endpoint: str, path: str = "dvcstore") -> None:
    """The README's remote set-up: URL and endpoint in .dvc/config (git), keys --local."""
    dvc(repo, "remote", "add", "-f", "-d", "storage", f"s3://{BUCKET}/{path}")
    dvc(repo, "remote", "modify", "storage", "endpointurl", endpoint)
    set_credentials(repo)


def set_credentials(repo: Path) -> None:
    dvc(repo, "remote", "modify", "--local", "storage", "access_key_id",
        CREDENTIALS["AWS_ACCESS_KEY_ID"])
    dvc(repo, "remote", "modify", "--local", "storage", "secret_access_key",
        CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def lock_hash(repo: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
    return next(out["md5"] for out in lock["outs"] if out["path"] == path)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's standalone S3 API on a free 127.0.0.1 port, with the bucket created."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "s3.log")
    try:  # stopped also when its start-up fails or times out
        server.start()
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def team_servers(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
) -> Iterator[TeamServers]:
    """PostgreSQL + `mlflow server` (artifacts in the S3 bucket) on top of s3_server."""
    # Not under pytest's basetemp: a concurrent pytest run chmods /tmp/pytest-of-<user> to 0700,
    # and PostgreSQL (run as the user `pgserver` under root) then PANICs on its own data folder.
    pgdata = Path(tempfile.mkdtemp(prefix="pneumonia-pg-")) / "pgdata"
    servers = TeamServers(tmp_path_factory.mktemp("team"), s3=s3_server, pgdata=pgdata)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
        shutil.rmtree(pgdata.parent, ignore_errors=True)


def tracking_env(servers: TeamServers) -> dict[str, str]:
    assert servers.mlflow is not None
    return clean_env(MLFLOW_TRACKING_URI=servers.mlflow.url, MLFLOW_EXPERIMENT_NAME=EXPERIMENT)


@dataclass
class TeamProject:
    repo: Path
    v1: str  # commit with the first results (pushed)
    v2: str  # commit with a changed lr and its results (pushed)
    servers: TeamServers
    log: str


@pytest.fixture(scope="session")
def team_project(
    tmp_path_factory: pytest.TempPathFactory, team_servers: TeamServers
) -> TeamProject:
    """The pipeline run twice (v1, then lr changed: v2), tracked on the MLflow server, each
    revision committed and pushed to the S3 remote."""
    assert team_servers.s3 is not None
    repo = make_project(tmp_path_factory.mktemp("team-project"), TINY)
    configure_remote(repo, team_servers.s3.url)
    git(repo, "add", ".dvc/config")
    git(repo, "commit", "-qm", "DVC remote on S3")
    env = tracking_env(team_servers)
    logs = [dvc(repo, "repro", env=env).stdout]
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v1 results")
    logs.append(dvc(repo, "push", env=env).stdout)
    v1 = git(repo, "rev-parse", "HEAD").strip()

    set_params(repo, {"lr": 3e-4})
    logs.append(dvc(repo, "repro", env=env).stdout)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v2: lr 3e-4")
    logs.append(dvc(repo, "push", env=env).stdout)
    v2 = git(repo, "rev-parse", "HEAD").strip()
    return TeamProject(repo, v1, v2, team_servers, "\n".join(logs))


def clone(project: TeamProject, dest: Path) -> Path:
    """A teammate's fresh clone: git clone, then credentials (never in git)."""
    run(["git", "clone", "-q", str(project.repo), str(dest)], dest.parent)
    set_credentials(dest)
    return dest
