"""Grids of queued DVC experiments: what `pneumonia ablation` and `pneumonia recipe` share.

A grid is a list of (experiment name, `-S` overrides). `run_grid` queues each as
`dvc exp run --queue -n NAME -S ...`, starts the queue (one worker by default: DVC's queue has
open races with several), waits for it and says why when every run failed. The reports read the
finished experiments from their git commits (pneumonia.experiments.revisions).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from pneumonia.errors import PipelineError
from pneumonia.params import load_params


def _dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], env=env, capture_output=True,
                          text=True, check=False)
    if check and proc.returncode != 0:
        raise PipelineError(
            f"`dvc {' '.join(args)}` failed (exit {proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr).strip()[-2000:]}"
        )
    return proc


def queue_status() -> dict[str, int]:
    """Counts of `dvc queue status` rows by state (Queued, Running, Success, Failed)."""
    out = _dvc("queue", "status").stdout
    counts: dict[str, int] = {}
    for line in out.splitlines()[1:]:
        for state in ("Queued", "Running", "Success", "Failed"):
            if f" {state} " in f" {line} ":
                counts[state] = counts.get(state, 0) + 1
    return counts


# Where DVC's queue workers write their pid files (dvc_task's ManagedProcess, one per worker).
WORKER_DIR = Path(".dvc/tmp/exps/celery")
# Worker restarts in a row without a run finishing in between before giving up.
MAX_RESTARTS = 3


def workers_alive(worker_dir: Path = WORKER_DIR) -> list[int]:
    """Pids of DVC queue workers still running (from their pid files; a pid reused by another
    program does not count)."""
    alive = []
    for pid_file in sorted(worker_dir.glob("dvc-exp-worker-*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace") if cmdline else ""
        if b"queue-worker" in cmdline and ") Z " not in stat:  # a zombie has finished
            alive.append(pid)
    return alive


def wait_for_queue(timeout_s: float, report_cmd: str, poll_s: float = 15.0, jobs: int = 1,
                   worker_dir: Path = WORKER_DIR) -> dict[str, int]:
    """Block until the queue's workers have finished every queued run; PipelineError after
    `timeout_s`.

    DVC's queue worker (celery over kombu's filesystem broker, DVC 3.67) can die mid-grid with
    "Unrecoverable error: JSONDecodeError" (.dvc/tmp/exps/celery/*.out): it read a broker
    message file that was still being written. The run it was running finishes; the rest stay
    queued with no worker. Seen in CI and on the development machine, also with nothing else
    touching the queue. So: wait for the worker processes to exit (a healthy worker stops after
    10 s idle), only then read `dvc queue status` (which itself broadcasts to the workers over
    that broker), and start a fresh worker while runs are still queued — as long as runs keep
    finishing (MAX_RESTARTS in a row without progress: give up with the logs' location)."""
    deadline = time.monotonic() + timeout_s
    stalled, finished_before = 0, -1
    while True:
        time.sleep(poll_s)  # first: a worker just started may not have written its pid file yet
        if not workers_alive(worker_dir):
            counts = queue_status()
            if not counts.get("Queued"):
                return counts
            finished = counts.get("Success", 0) + counts.get("Failed", 0)
            stalled = 0 if finished > finished_before else stalled + 1
            finished_before = finished
            if stalled >= MAX_RESTARTS:
                raise PipelineError(
                    f"DVC's queue worker stopped {stalled} times in a row without finishing a "
                    f"run ({counts}): `dvc queue logs NAME` and .dvc/tmp/exps/celery/*.out say "
                    f"why; `dvc queue start` runs the rest, then `{report_cmd}`."
                )
            print(f"the queue worker stopped with {counts['Queued']} run(s) still queued "
                  "(DVC's queue: a broker read error, see .dvc/tmp/exps/celery/*.out): "
                  "starting a new one", flush=True)
            _dvc("queue", "start", "-j", str(jobs))
        if time.monotonic() > deadline:
            raise PipelineError(
                f"the queue is still busy after {timeout_s / 60:.0f} min. It keeps running in "
                "the background: `dvc queue status`, `dvc queue logs NAME`; "
                f"then `{report_cmd}`."
            )


def dataset_override(raw: str) -> dict[str, str]:
    """`-S data.raw=<absolute path>` when the dataset sits inside the repository but is not in git.

    DVC runs queued experiments in a temporary copy of the git-tracked files, so a dataset in
    `data/raw/` (ignored by git, where docs/data.md puts it) is missing there and every run fails in
    ingest with "No such file or directory". An absolute path reaches it from the copy; a tracked
    folder (the bundled sample) and an absolute path need nothing.
    """
    path = Path(raw)
    if path.is_absolute():
        return {}
    if not path.exists():
        raise PipelineError(
            f"data.raw: {raw} does not exist. The grid trains on the dataset params.yaml names: "
            "put it there (docs/data.md, 'Getting the full dataset') or set data.raw in params.yaml."
        )
    tracked = subprocess.run(["git", "ls-files", "--", raw], capture_output=True, text=True,
                             check=False).stdout.strip()
    return {} if tracked else {"data.raw": str(path.resolve())}


def first_failure() -> str:
    """The last lines of the first failed queued experiment's log (why it failed)."""
    for line in _dvc("queue", "status", check=False).stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2 and " Failed" in f" {line} ":
            logs = _dvc("queue", "logs", fields[1], check=False)
            tail = [ln for ln in (logs.stdout + logs.stderr).splitlines() if ln.strip()][-8:]
            return f"{fields[1]}:\n" + "\n".join(tail)
    return ""


def add_queue_arguments(parser: argparse.ArgumentParser) -> None:
    """--jobs, --dry-run, --no-wait, --timeout-min: the options every grid command takes."""
    parser.add_argument("--jobs", type=int, default=1,
                        help="queue workers (default 1: DVC's queue has open races with several)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the experiments and their overrides, queue nothing")
    parser.add_argument("--no-wait", action="store_true",
                        help="queue and start the runs, return at once (report later)")
    parser.add_argument("--timeout-min", type=float, default=1200.0,
                        help="give up waiting after this many minutes (default 1200)")


def run_grid(runs: list[tuple[str, dict[str, str]]], args: argparse.Namespace, what: str,
             report_cmd: str) -> dict[str, int] | None:
    """Queue `runs` ((name, overrides) pairs) and run them; None for --dry-run / --no-wait, else
    the queue's final counts. PipelineError when every run failed (with the first one's log)."""
    data = dataset_override(load_params().data.raw)
    if args.jobs < 1:
        raise PipelineError("--jobs must be at least 1.")
    for name, overrides in runs:
        flags = " ".join(f"-S {k}={v}" for k, v in (overrides | data).items())
        print(f"{name}: dvc exp run --queue -n {name} {flags}")
    if args.dry_run:
        return None
    if not Path("dvc.yaml").is_file():
        raise PipelineError(f"run `pneumonia {what}` from the repository root (where dvc.yaml is).")
    for name, overrides in runs:
        cmd = ["exp", "run", "--queue", "-n", name]
        for key, value in (overrides | data).items():
            cmd += ["-S", f"{key}={value}"]
        _dvc(*cmd)
    _dvc("queue", "start", "-j", str(args.jobs))
    print(f"queued {len(runs)} experiments, {args.jobs} worker(s): `dvc queue status` to follow")
    if args.no_wait:
        return None
    counts = wait_for_queue(args.timeout_min * 60, report_cmd, jobs=args.jobs)
    print(f"queue finished: {counts}")
    if counts.get("Failed") and not counts.get("Success"):
        raise PipelineError(
            f"all {counts['Failed']} queued experiments failed; the first one's log ends:\n"
            f"{first_failure()}\n`dvc queue logs NAME` shows each; fix, then "
            f"`dvc queue remove --failed` and run `pneumonia {what}` again."
        )
    return counts
