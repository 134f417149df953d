"""The queue runner's wait (pneumonia.experiments.grid): it must tell a running DVC queue worker
from a finished one by its process, never by asking the worker (`dvc queue status` broadcasts to
the workers over celery's filesystem broker, and a worker can die reading a half-written
broadcast). The whole grid through DVC's real queue: tests/experiments/test_ablation.py (slow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pneumonia.experiments.grid import workers_alive


def test_a_worker_is_alive_while_its_process_runs_and_not_after(tmp_path: Path) -> None:
    # A real process whose command line carries `queue-worker`, like DVC's `dvc exp queue-worker`.
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)",
         "queue-worker"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"  # exec'd: its cmdline
        (tmp_path / "dvc-exp-worker-1.pid").write_text(f"{proc.pid}\n")
        assert workers_alive(tmp_path) == [proc.pid]
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert workers_alive(tmp_path) == []  # the pid file stays behind; the process is gone


def test_a_pid_reused_by_another_program_is_no_worker(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "dvc-exp-worker-1.pid").write_text(str(proc.pid))
        (tmp_path / "dvc-exp-worker-2.pid").write_text("not a pid")
        assert workers_alive(tmp_path) == []
    finally:
        proc.kill()
        proc.wait(timeout=30)
