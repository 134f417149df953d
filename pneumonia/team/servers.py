"""Local team services: an S3 API (moto), PostgreSQL (pgserver) and an MLflow tracking server.

    pneumonia team up [--dir .team] [--mlflow-port 5000] [--s3-port 9000]

starts all three on 127.0.0.1 (PostgreSQL on a unix socket only), writes their URLs to
`<dir>/servers.json` and shell exports to `<dir>/env.sh`, and stops them on Ctrl-C, SIGTERM or
SIGHUP (a closed terminal), also during start-up. Ports are checked free first (pneumonia/team/
processes.py: a program already on a port is named, never taken for our server).
Tests use the same classes (`TeamServers`) through fixtures. The MLflow server stores runs in
PostgreSQL and artifacts (confusion matrix, models) in the bucket, served through the tracking
server itself (`--artifacts-destination`), so clients need only the tracking URL.

moto keeps its objects in memory: a restarted S3 server is empty. It stands in for a real S3 /
MinIO here; on a team machine point DVC and `mlflow server` at the real service instead
(docs/team.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pneumonia.team.processes import (
    HOST,
    ServerError,
    check_port_free,
    executable,
    free_port,
    log_tail,
    spawn,
    stop_process,
    wait_http,
)

BUCKET = "pneumonia"
# moto accepts any key pair; real S3 / MinIO credentials go to `dvc remote modify --local`.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How a user picks other ports (Makefile variables, this module's flags).
MLFLOW_PORT_SETTING = "MLFLOW_PORT (`make mlflow-server MLFLOW_PORT=5003`, or --mlflow-port)"
S3_PORT_SETTING = "S3_PORT (`make mlflow-server S3_PORT=9001`, or --s3-port)"


@dataclass
class S3Server:
    """moto's standalone S3 API server on 127.0.0.1."""

    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 30) -> S3Server:
        cmd = [executable("moto_server"), "-H", HOST, "-p", "PORT"]
        if self.port:
            check_port_free(self.port, S3_PORT_SETTING)
        self.port = self.port or free_port()
        cmd[-1] = str(self.port)
        self.proc = spawn(cmd, self.log, {**os.environ, **CREDENTIALS})
        wait_http(f"{self.url}/moto-api/", self.proc, self.log, timeout)
        return self

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def create_bucket(self, name: str = BUCKET) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class Postgres:
    """A real PostgreSQL from the pgserver wheel, listening on a unix socket in `pgdata` only."""

    pgdata: Path
    server: Any = None

    def start(self) -> Postgres:
        try:
            import pgserver
        except ImportError:
            # pyproject.toml installs pgserver only where its wheels exist (CPython <= 3.12).
            raise ServerError(
                f"pgserver (the local PostgreSQL of `make mlflow-server`) is not installed for "
                f"Python {sys.version_info.major}.{sys.version_info.minor}: its last release "
                "has wheels up to CPython 3.12. Use Python 3.11 or 3.12 (`make install "
                "PYTHON=python3.12`), or run a PostgreSQL of your own and start `mlflow server "
                "--backend-store-uri postgresql+psycopg2://...` against it."
            ) from None

        self.pgdata = self.pgdata.expanduser().resolve()  # as pgserver keys its instances
        forget_dead_handles(self.pgdata)
        # cleanup_mode "stop": stopped (data kept) by stop() or when this process exits.
        try:
            self.server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            raise ServerError(
                f"PostgreSQL (pgserver) did not start in {self.pgdata}: {exc}\n"
                f"{log_tail(self.pgdata / 'log')}"
            ) from None
        return self

    @property
    def uri(self) -> str:
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the wheel we pin is psycopg2.
        return self.server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)

    def stop(self) -> None:
        """Drop our handle (pgserver stops PostgreSQL when it was the last live one); after a
        start cut short by a signal (no handle yet), stop the server it left running."""
        forget_dead_handles(self.pgdata)
        if self.server is not None:
            self.server.cleanup()
            self.server = None
        else:
            stop_orphaned_postgres(self.pgdata)


def forget_dead_handles(pgdata: Path) -> list[int]:
    """Remove PIDs of processes that no longer run from pgserver's handle list
    (pgdata/.handle_pids.json); return the live ones.

    pgserver stops PostgreSQL only when the last handle is closed, and never prunes a handle
    whose process died without closing it (kill -9, a closed terminal): one dead PID there and
    every later clean stop left PostgreSQL running. Under pgserver's own inter-process lock."""
    import psutil
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import DiskList

    handles = DiskList(pgdata / ".handle_pids.json")
    with PostgresServer._lock:
        try:
            pids = handles.get()
        except (OSError, ValueError):
            pids = []
        live = [pid for pid in pids if psutil.pid_exists(pid)]
        if live != pids:
            handles.put(live)
    return live


def stop_orphaned_postgres(pgdata: Path, timeout: float = 30) -> None:
    """Stop the PostgreSQL of `pgdata` when no live process holds a handle on it (a start cut
    short by a signal before pgserver recorded ours). Found by its command line, as pgserver
    itself does: postmaster.pid may not be written yet when the start was cut short."""
    import psutil
    from pgserver.postgres_server import PostgresServer

    others = [pid for pid in forget_dead_handles(pgdata) if pid != os.getpid()]
    if others:
        return  # another process uses this server: it stops it
    PostgresServer._instances.pop(pgdata, None)  # a half-made handle must not be reused
    postmasters = postgres_processes(pgdata)
    for proc in postmasters:
        with suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
    _, alive = psutil.wait_procs(postmasters, timeout=timeout)
    for proc in alive:
        with suppress(psutil.NoSuchProcess):
            proc.kill()


def postgres_processes(pgdata: Path) -> list[Any]:
    """The running postmaster(s) of `pgdata` (psutil processes: `postgres -D <pgdata> ...`)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and "-D" in cmd and str(pgdata) in cmd:
            found.append(proc)
    return found


@dataclass
class MlflowServer:
    """`mlflow server`: runs in PostgreSQL, artifacts proxied to s3://<bucket>/mlartifacts."""

    backend_uri: str
    s3_url: str
    log: Path
    bucket: str = BUCKET
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 90) -> MlflowServer:
        if self.port and self.proc is None:  # (a restart of ours reuses its own port)
            check_port_free(self.port, MLFLOW_PORT_SETTING)
        self.port = self.port or free_port()
        env = {
            **os.environ,
            **CREDENTIALS,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            # 7 job workers: ~2.2 GB instead of ~0.5 GB (docs/team.md); the pipeline uses none.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [
            executable("mlflow"), "server",
            "--backend-store-uri", self.backend_uri,
            "--artifacts-destination", f"s3://{self.bucket}/mlartifacts",
            "--host", HOST, "--port", str(self.port), "--workers", "1",
        ]
        self.proc = spawn(cmd, self.log, env)
        wait_http(f"{self.url}/health", self.proc, self.log, timeout)
        return self

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class TeamServers:
    """S3 + PostgreSQL + MLflow server for one working folder; a context manager."""

    root: Path
    s3_port: int = 0
    mlflow_port: int = 0
    s3: S3Server | None = None
    postgres: Postgres | None = None
    mlflow: MlflowServer | None = None
    # PostgreSQL runs as the user `pgserver` when started by root and needs to traverse every
    # folder above pgdata: keep it out of folders that other tools chmod 0700 (pytest's tmp).
    pgdata: Path | None = None
    started: list[Any] = field(default_factory=list)

    def start(self) -> TeamServers:
        """Start what is missing. Each server is registered for stopping *before* it is started
        and waited for: a time-out, an error or a signal during start-up stops everything
        started so far, the server being started included."""
        # Every fixed port first: fail before starting (or writing) anything.
        if self.s3 is None and self.s3_port:
            check_port_free(self.s3_port, S3_PORT_SETTING)
        if self.mlflow_port:
            check_port_free(self.mlflow_port, MLFLOW_PORT_SETTING)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            if self.s3 is None:  # else: an S3 server the caller started (and stops)
                self.s3 = S3Server(self.root / "s3.log", self.s3_port)
                self.started.append(self.s3)
                self.s3.start()
                self.s3.create_bucket(BUCKET)
            self.postgres = Postgres(self.pgdata or self.root / "pgdata")
            self.started.append(self.postgres)
            self.postgres.start()
            self.mlflow = MlflowServer(
                self.postgres.uri, self.s3.url, self.root / "mlflow.log", port=self.mlflow_port
            )
            self.started.append(self.mlflow)
            self.mlflow.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop in reverse order; each stop is attempted even if an earlier one fails."""
        while self.started:
            server = self.started.pop()
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"warning: stopping {type(server).__name__}: {exc}", file=sys.stderr)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> dict[str, str]:
        assert self.s3 and self.postgres and self.mlflow
        return {
            "s3_endpoint": self.s3.url,
            "bucket": BUCKET,
            "dvc_remote": f"s3://{BUCKET}/dvcstore",
            "mlflow_artifacts": f"s3://{BUCKET}/mlartifacts",
            "postgres": self.postgres.uri,
            "mlflow_tracking_uri": self.mlflow.url,
        }

    def write(self) -> Path:
        """servers.json (URLs) and env.sh (exports for a shell) in the working folder."""
        info = self.describe()
        (self.root / "servers.json").write_text(json.dumps(info, indent=2) + "\n")
        env = {**CREDENTIALS, "MLFLOW_TRACKING_URI": info["mlflow_tracking_uri"]}
        lines = [f"export {k}={v}" for k, v in env.items()]
        (self.root / "env.sh").write_text("\n".join(lines) + "\n")
        return self.root / "servers.json"
