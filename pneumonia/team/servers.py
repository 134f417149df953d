"""Local team services: an S3 API (moto), PostgreSQL (pgserver) and an MLflow tracking server.

    python -m pneumonia.team.servers up [--dir .team] [--mlflow-port 5000] [--s3-port 9000]

starts all three on 127.0.0.1 (PostgreSQL on a unix socket only), writes their URLs to
`<dir>/servers.json` and shell exports to `<dir>/env.sh`, and stops them on Ctrl-C / SIGTERM.
Tests use the same classes (`TeamServers`) through fixtures. The MLflow server stores runs in
PostgreSQL and artifacts (confusion matrix, models) in the bucket, served through the tracking
server itself (`--artifacts-destination`), so clients need only the tracking URL.

moto keeps its objects in memory: a restarted S3 server is empty. It stands in for a real S3 /
MinIO here; on a team machine point DVC and `mlflow server` at the real service instead
(docs/team.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

HOST = "127.0.0.1"
BUCKET = "pneumonia"
# moto accepts any key pair; real S3 / MinIO credentials go to `dvc remote modify --local`.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class ServerError(RuntimeError):
    """A service did not start (its log's tail is in the message)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    """An executable of this Python's environment (moto_server, mlflow), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def _tail(log: Path, n: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll `url` until it answers HTTP < 500; fail early if `proc` exits; bounded by timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{proc.args!r} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise ServerError(f"{url} did not answer within {timeout:.0f} s:\n{_tail(log)}")


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    """Stop a server started in its own process group: SIGTERM, then SIGKILL after `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        # Own process group (start_new_session): stop_process kills the server and its workers.
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


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
        self.port = self.port or free_port()
        cmd = [_bin("moto_server"), "-H", HOST, "-p", str(self.port)]
        self.proc = _spawn(cmd, self.log, {**os.environ, **CREDENTIALS})
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

        # cleanup_mode "stop": stopped (data kept) by stop() or when this process exits.
        self.server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        return self

    @property
    def uri(self) -> str:
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the wheel we pin is psycopg2.
        return self.server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None


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
            _bin("mlflow"), "server",
            "--backend-store-uri", self.backend_uri,
            "--artifacts-destination", f"s3://{self.bucket}/mlartifacts",
            "--host", HOST, "--port", str(self.port), "--workers", "1",
        ]
        self.proc = _spawn(cmd, self.log, env)
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
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            if self.s3 is None:  # else: an S3 server the caller started (and stops)
                self.s3 = S3Server(self.root / "s3.log", self.s3_port).start()
                self.started.append(self.s3)
                self.s3.create_bucket(BUCKET)
            self.postgres = Postgres(self.pgdata or self.root / "pgdata").start()
            self.started.append(self.postgres)
            self.mlflow = MlflowServer(
                self.postgres.uri, self.s3.url, self.root / "mlflow.log", port=self.mlflow_port
            ).start()
            self.started.append(self.mlflow)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pneumonia.team.servers",
        description="Start a local S3 API (moto), PostgreSQL (pgserver) and an MLflow tracking "
        "server on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--dir", type=Path, default=Path(".team"), help="state and logs")
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--s3-port", type=int, default=9000)
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    servers = TeamServers(args.dir.resolve(), args.s3_port, args.mlflow_port)
    try:
        servers.start()
    except ServerError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        path = servers.write()
        info = servers.describe()
        print(f"S3 API      {info['s3_endpoint']}  (bucket {info['bucket']}, moto: in memory)")
        print(f"PostgreSQL  {info['postgres']}")
        print(f"MLflow      {info['mlflow_tracking_uri']}  (artifacts {info['mlflow_artifacts']})")
        print(f"URLs in {path}; `source {args.dir / 'env.sh'}` in another shell, then")
        print(f"  dvc remote add -d storage {info['dvc_remote']}")
        print(f"  dvc remote modify storage endpointurl {info['s3_endpoint']}")
        print("Ctrl-C stops all three.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        servers.stop()


if __name__ == "__main__":
    main()
