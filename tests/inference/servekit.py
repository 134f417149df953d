"""A real `mlflow models serve` process on 127.0.0.1 (free port, bounded start-up wait, the
whole process group killed afterwards), and requests to it."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(model_uri: str, tracking_uri: str, log: Path, timeout: float = 120) -> Iterator[str]:
    """Serve `model_uri` (`--env-manager local`); yield the base URL once /ping answers 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}):\n"
                                   + log.read_text(errors="replace")[-3000:])
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up after {timeout} s:\n"
                                   + log.read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def payload(images: list[bytes], **params: Any) -> bytes:
    doc: dict[str, Any] = {"dataframe_split": {
        "columns": ["image"], "data": [[base64.b64encode(b).decode("ascii")] for b in images]}}
    if params:
        doc["params"] = params
    return json.dumps(doc).encode()


def post(url: str, body: bytes, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"{url}/invocations", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
