"""Processes the tests start, and the check that none outlives the test session.

Every process a test starts inherits the environment variable `SESSION_VAR`, set once per
pytest session to a value of its own; a process that left our process tree (daemonised:
PostgreSQL under pg_ctl, DVC's queue workers; or re-parented when its parent died) still
carries it in /proc/<pid>/environ. So "started by this test session" is: a descendant of the
pytest process, or a process carrying this session's marker — never a process of another
engineer's concurrent test run (its marker differs) or of anyone else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

SESSION_VAR = "PNEUMONIA_TEST_SESSION"


def mark_session() -> str:
    """Give this process (and so every process it starts) a fresh session marker."""
    os.environ[SESSION_VAR] = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    return os.environ[SESSION_VAR]


def _has_marker(proc: psutil.Process, marker: str) -> bool:
    try:
        return proc.environ().get(SESSION_VAR) == marker
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
        return False


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def session_processes(marker: str | None = None) -> list[psutil.Process]:
    """Running processes started by this test session (descendants of this process, or
    carrying `marker`), this process excluded."""
    marker = marker or os.environ.get(SESSION_VAR)
    me = psutil.Process()
    found: dict[int, psutil.Process] = {}
    with suppress(psutil.NoSuchProcess):
        found |= {p.pid: p for p in me.children(recursive=True)}
    if marker:
        for proc in psutil.process_iter():
            if proc.pid != me.pid and proc.pid not in found and _has_marker(proc, marker):
                found[proc.pid] = proc
    return [p for p in found.values() if _running(p)]


def describe(proc: psutil.Process) -> str:
    """"pid N (parent P, group G): command line" for a leak report."""
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
        return f"pid {proc.pid} (parent {proc.ppid()}, group {os.getpgid(proc.pid)}): {cmd[:300]}"
    except (psutil.Error, OSError):
        return f"pid {proc.pid} (gone)"


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `procs` still running after up to `timeout` seconds."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in alive if _running(p)]


def cmdline(proc: psutil.Process) -> str:
    """The command line of `proc`, "" when it is gone (short-lived helpers vanish mid-scan)."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def kill_group(proc: subprocess.Popen[Any], timeout: float = 60, grace: float = 0) -> None:
    """SIGKILL the process group `proc` leads (it was started with start_new_session=True):
    the process and everything it started, e.g. `dvc repro` and its stage. With `grace`, SIGTERM
    first and up to `grace` s to exit (a server manager stops its servers). When `proc` was
    already reaped, its group id may since be anyone's: then only processes of that group that
    carry this session's marker are killed."""
    if proc.returncode is None and grace > 0:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    if proc.returncode is None:  # not reaped: its pid, the group's id, cannot be reused yet
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    else:
        for other in session_processes():
            with suppress(psutil.Error, OSError):
                if os.getpgid(other.pid) == proc.pid:
                    other.kill()
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


@contextmanager
def process_group(cmd: list[str], grace: float = 0,
                  **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """`subprocess.Popen(cmd)` in a process group of its own, killed with all its members when
    the block ends — also when the test fails or times out (`grace`: see kill_group)."""
    proc = subprocess.Popen(cmd, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        kill_group(proc, grace=grace)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def kill_session_processes_in(folder: Path, grace: float = 30) -> list[str]:
    """Wait up to `grace` s for this session's processes working in `folder` (cwd inside it:
    DVC queue workers and their stages) to exit, then SIGKILL those left; describe them."""
    folder = folder.resolve()

    def inside() -> list[psutil.Process]:
        found = []
        for proc in session_processes():
            with suppress(psutil.Error, OSError):
                if Path(proc.cwd()).resolve().is_relative_to(folder):
                    found.append(proc)
        return found

    left = wait_gone(inside(), timeout=grace)
    described = [describe(p) for p in left]
    for proc in left:
        with suppress(psutil.Error):
            proc.kill()
    return described
