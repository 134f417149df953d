"""`pneumonia team up` and `pneumonia team multiworker`: their options, on the library in
pneumonia/team/ (`pneumonia team push` / `pull` parse their own arguments: pneumonia.team.remote)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from pneumonia.team.multiworker import ClusterError, run_check
from pneumonia.team.processes import ServerError
from pneumonia.team.servers import STOP_SIGNALS, TeamServers


def up(argv: list[str] | None = None) -> None:
    """`pneumonia team up`: the three servers until Ctrl-C (pneumonia.team.servers)."""
    parser = argparse.ArgumentParser(
        prog="pneumonia team",
        description="Start a local S3 API (moto), PostgreSQL (pgserver) and an MLflow tracking "
        "server on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--dir", type=Path, default=Path(".team"), help="state and logs")
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--s3-port", type=int, default=9000)
    args = parser.parse_args(argv)

    def on_signal(signum: int, frame: object) -> None:
        # Once: a second signal must not cut short the stopping it started.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    # Ctrl-C, `kill`, and a closed terminal (SIGHUP): stop every server, also during start-up.
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    servers = TeamServers(args.dir.resolve(), args.s3_port, args.mlflow_port)
    try:
        servers.start()
    except ServerError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted during start-up: stopped what had started", file=sys.stderr)
        sys.exit(130)
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


def multiworker(argv: list[str] | None = None) -> None:
    """Run the check with TF_CONFIG from the environment; print (and write OUT) the result."""
    parser = argparse.ArgumentParser(
        description="Check a MultiWorkerMirroredStrategy cluster: run this on every worker with "
        "the same TF_CONFIG cluster list and its own task index.")
    parser.add_argument("out", nargs="?", type=Path, help="also write the result JSON here")
    args = parser.parse_args(argv)
    try:
        result = run_check()
    except ClusterError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(2)
    text = json.dumps(result)
    if args.out:
        args.out.write_text(text)
    print(text)
