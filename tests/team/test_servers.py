"""The team servers under faults: a port someone else holds, a missing executable, a signal
during start-up, a closed terminal, a PostgreSQL handle left by a killed process. Each case
ends in one clear message and no server left running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pneumonia.team.processes import HOST, ServerError, free_port, wait_http
from pneumonia.team.servers import Postgres, postgres_processes
from tests.prockit import cmdline, process_group, wait_gone

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def foreign_server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Another program on a port: Python's http.server (200 at /, 404 elsewhere)."""
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", "--bind", HOST, "--directory", str(tmp_path),
           str(port)]
    with process_group(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "http.server"
                time.sleep(0.1)
        yield port, proc


def servers_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env | extra


@pytest.mark.parametrize("taken", ["MLFLOW_PORT", "S3_PORT"])
def test_make_mlflow_server_on_a_taken_port_names_the_owner(
    foreign_server: tuple[int, subprocess.Popen[bytes]], taken: str,
) -> None:
    """Another program (`make mlflow-ui` on 5000, a leftover moto on 9000, ...) holds a port:
    it used to be taken for our server, reported ready and written to .team/env.sh."""
    port, other = foreign_server
    ports = {"MLFLOW_PORT": free_port(), "S3_PORT": free_port()} | {taken: port}
    # `-o install`: the venv is there; the recipe `make mlflow-server` runs, unchanged.
    proc = subprocess.run(
        ["make", "--no-print-directory", "-o", "install", "mlflow-server",
         *(f"{k}={v}" for k, v in ports.items())],
        cwd=ROOT, env=servers_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode != 0
    assert (f"ERROR: port {port} on 127.0.0.1 is in use by pid {other.pid}: "
            f"{sys.executable} -m http.server") in proc.stderr, proc.stderr
    assert f"set {taken}" in proc.stderr and "Traceback" not in proc.stderr
    assert other.poll() is None  # the other program is left alone
    # Checked before anything started: nothing came up on the other port.
    (free,) = (v for k, v in ports.items() if k != taken)
    with socket.socket() as s:
        s.bind((HOST, free))


def test_readiness_needs_200_from_our_own_process(
    foreign_server: tuple[int, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port, other = foreign_server
    log = tmp_path / "ours.log"
    log.write_text("")
    # "Ours": a process that is alive but never listens (a server that failed to bind).
    with process_group([sys.executable, "-c", "import time; time.sleep(120)"]) as ours:
        with pytest.raises(ServerError, match=rf"not from the server we started: port {port} "
                           rf"is held by pid {other.pid}"):
            wait_http(f"http://{HOST}:{port}/", ours, log, timeout=20)
        # A 404 is no answer of an MLflow server (it answers 200 at /health).
        with pytest.raises(ServerError, match=r"did not answer HTTP 200 .*last: HTTP 404"):
            wait_http(f"http://{HOST}:{port}/health", ours, log, timeout=2)


def test_missing_moto_server_is_a_clear_error(tmp_path: Path) -> None:
    """The team extra not installed: the system's Python, without moto, runs `up`."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or subprocess.run([python, "-c", "import moto"], capture_output=True,
                                        check=False).returncode == 0:
        pytest.skip("needs a system python3 without moto")
    proc = subprocess.run(
        [python, "-m", "pneumonia", "team", "up", "--dir", str(tmp_path / "team"),
         "--mlflow-port", "0", "--s3-port", "0"],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "ERROR: `moto_server` is not installed" in proc.stderr
    assert "pip install -e '.[team]'" in proc.stderr and "Traceback" not in proc.stderr


def _descendants(proc: subprocess.Popen[str]) -> set[psutil.Process]:
    try:
        return set(psutil.Process(proc.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return set()


def _up(folder: Path) -> list[str]:
    return [sys.executable, "-m", "pneumonia", "team", "up", "--dir", str(folder),
            "--mlflow-port", "0", "--s3-port", "0"]


def _descendants_until(up: subprocess.Popen[str], marker: str, timeout: float, poll: float
                       ) -> set[psutil.Process]:
    """Every process `up` started, collected until one's command line contains `marker`."""
    seen: set[psutil.Process] = set()
    deadline = time.monotonic() + timeout
    while not any(marker in cmdline(p) for p in seen):
        assert up.poll() is None and time.monotonic() < deadline, up.stdout.read()
        seen |= _descendants(up)
        time.sleep(poll)
    return seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_while_a_server_starts_stops_it(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM / SIGHUP (terminal closed) while moto, the first server, is starting: it was
    registered for stopping only once ready, and was left running."""
    with process_group(_up(tmp_path / "team"), cwd=ROOT, env=servers_env(), text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, grace=60) as up:
        seen = _descendants_until(up, "moto_server", timeout=60, poll=0.02)
        assert not (tmp_path / "team/pgdata").exists()  # still starting the first server
        up.send_signal(sig)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 130, out
    assert "interrupted during start-up" in out and "Traceback" not in out
    assert not wait_gone(list(seen), timeout=20), "a server outlived `up`"


@pytest.mark.slow
def test_hangup_during_mlflow_start_up_stops_all_three(tmp_path: Path) -> None:
    """The terminal closes while `mlflow server` starts (S3 and PostgreSQL up): all three stop,
    PostgreSQL (daemonised by pg_ctl, not our child) included."""
    folder = Path(tempfile.mkdtemp(prefix="pneumonia-up-"))  # PostgreSQL: not in pytest's tmp
    try:
        with process_group(_up(folder), cwd=ROOT, env=servers_env(), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, grace=60) as up:
            seen = _descendants_until(up, "mlflow", timeout=300, poll=0.05)
            postgres = postgres_processes((folder / "pgdata").resolve())
            assert postgres, "PostgreSQL should be up before mlflow starts"
            up.send_signal(signal.SIGHUP)
            out, _ = up.communicate(timeout=120)
        assert up.returncode == 130, out
        assert not wait_gone([*seen, *postgres], timeout=30), "a server outlived `up`"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_dead_handle_no_longer_keeps_postgres_running() -> None:
    """A process using PostgreSQL is killed (kill -9: no clean-up); pgserver keeps its PID in
    pgdata/.handle_pids.json. A later start and clean stop must really stop PostgreSQL."""
    pgdata = Path(tempfile.mkdtemp(prefix="pneumonia-pg-")) / "pgdata"
    code = ("import sys, time; from pathlib import Path; from pneumonia.team.servers import "
            "Postgres; Postgres(Path(sys.argv[1])).start(); print('up', flush=True); "
            "time.sleep(600)")
    try:
        with process_group([sys.executable, "-c", code, str(pgdata)], cwd=ROOT,
                           stdout=subprocess.PIPE, text=True) as user:
            assert user.stdout.readline().strip() == "up"
            os.killpg(user.pid, signal.SIGKILL)
            user.wait(timeout=30)
        assert user.pid in json.loads((pgdata / ".handle_pids.json").read_text())  # stale
        assert postgres_processes(pgdata.resolve()), "PostgreSQL outlives its killed user"

        server = Postgres(pgdata).start()  # the same data folder, reused
        assert server.server.get_pid() in {p.pid for p in postgres_processes(server.pgdata)}
        server.stop()
        assert not wait_gone(postgres_processes(pgdata.resolve()), timeout=30)
        assert json.loads((pgdata / ".handle_pids.json").read_text()) == []
    finally:
        for proc in postgres_processes(pgdata.resolve()):  # whatever the outcome
            proc.kill()
        shutil.rmtree(pgdata.parent, ignore_errors=True)
