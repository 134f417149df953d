"""Starting and stopping server processes on 127.0.0.1: free and taken ports, readiness (HTTP
200 from *our* process), stopping a process group. Used by the team servers
(pneumonia/team/servers.py) and by tests that start a real server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A service did not start (its log's tail is in the message)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def executable(name: str) -> str:
    """An executable of this Python's environment (moto_server, mlflow), else from PATH; a
    ServerError (not a raw FileNotFoundError) when it is in neither."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise ServerError(
            f"`{name}` is not installed: not next to {sys.executable}, not on PATH. Install the "
            "team extra in this environment: `pip install -e '.[team]'` (`make install` does)."
        )
    return found


def log_tail(log: Path, n: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def port_owner(port: int) -> str | None:
    """Who listens on 127.0.0.1:`port` (e.g. "pid 4242: mlflow ui --port 5000"), None when the
    port is free. Binds the port the way the servers do (SO_REUSEADDR: a closing connection
    in TIME_WAIT does not count as in use)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return None
        except OSError:
            pass
    for pid in _listeners(port):
        return _describe(pid)
    return "another process"


def _listeners(port: int) -> list[int]:
    """PIDs with a listening TCP socket on `port` (empty when the OS does not tell us)."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return []
    return sorted({c.pid for c in conns
                   if c.pid and c.status == psutil.CONN_LISTEN and c.laddr.port == port})


def _describe(pid: int) -> str:
    import psutil

    try:
        cmd = " ".join(psutil.Process(pid).cmdline()) or psutil.Process(pid).name()
    except psutil.Error:
        return f"pid {pid}"
    return f"pid {pid}: {cmd[:200]}"


def check_port_free(port: int, setting: str) -> None:
    """Refuse a port someone else holds: a server there would answer our readiness checks and
    be taken for ours. `setting` is how the user picks another port (make variable, flag)."""
    owner = port_owner(port)
    if owner is not None:
        raise ServerError(
            f"port {port} on {HOST} is in use by {owner}; set {setting} to a free port, or "
            "stop that process."
        )


def _owns_port(proc: subprocess.Popen[bytes], port: int) -> bool:
    """Whether `proc` or one of its descendants (uvicorn under `mlflow server`) listens on
    `port`. True when the OS does not say who listens (nothing to contradict)."""
    import psutil

    owners = _listeners(port)
    if not owners:
        return True
    try:
        ours = {proc.pid} | {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return False
    return bool(ours & set(owners))


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll `url` until it answers HTTP 200 *from `proc`*: our process alive and listening on
    the port. Fail early if `proc` exits; bounded by timeout. (Any answer < 500 used to count:
    another program on the port was taken for the server.)"""
    deadline = time.monotonic() + timeout
    port = urllib.parse.urlsplit(url).port
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{proc.args!r} exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            status, last = None, str(getattr(exc, "reason", exc))
        if status is not None:
            last = f"HTTP {status}"
            if status == 200 and proc.poll() is None:
                if port is None or _owns_port(proc, port):
                    return
                raise ServerError(
                    f"{url} answered, but not from the server we started: port {port} is held "
                    f"by {port_owner(port) or 'another process'}. Pick another port."
                )
        time.sleep(0.3)
    raise ServerError(
        f"{url} did not answer HTTP 200 within {timeout:.0f} s (last: {last}):\n{log_tail(log)}"
    )


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


def spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        # Own process group (start_new_session): stop_process kills the server and its workers,
        # and a Ctrl-C / closed terminal reaches only `up`, which stops them in order.
        try:
            return subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        except OSError as exc:  # e.g. not executable
            raise ServerError(f"cannot start {cmd[0]}: {exc}") from None
