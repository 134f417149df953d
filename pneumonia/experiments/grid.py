"""Grids of queued DVC experiments: what `pneumonia ablation` and `pneumonia recipe` share.

A grid is a list of (experiment name, `-S` overrides). `run_grid` queues each as
`dvc exp run --queue -n NAME -S ...`, starts the queue (one worker by default: DVC's queue has
open races with several), waits for it and says why when every run failed. The reports read the
finished experiments from their git commits (pneumonia.experiments.revisions).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pneumonia.errors import PipelineError
from pneumonia.params import load_params


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], env=_env(), capture_output=True,
                          text=True, check=False)
    if check and proc.returncode != 0:
        raise PipelineError(
            f"`dvc {' '.join(args)}` failed (exit {proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr).strip()[-2000:]}"
        )
    return proc


# Where `dvc queue start`'s own output goes (see run_logged).
START_LOG = Path(".dvc/tmp/exps/pneumonia-queue-start.log")


def run_logged(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Run `cmd` with its stdout and stderr appended to `log`; its exit code.

    Not `capture_output`: `dvc queue start` forks the queue worker, which inherits the pipes, so
    reading them to their end waited for the worker (the whole grid: `--no-wait` returned after
    90 s, a restarted worker held the wait loop past `--timeout-min`). A file has no end to wait
    for."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                              check=False).returncode


def start_queue(jobs: int) -> None:
    """`dvc queue start -j JOBS`, its output in START_LOG; PipelineError if it fails."""
    rc = run_logged([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)], START_LOG,
                    _env())
    if rc != 0:
        tail = START_LOG.read_text(errors="replace").strip()[-2000:]
        raise PipelineError(f"`dvc queue start -j {jobs}` failed (exit {rc}):\n{tail}")


def queue_rows() -> list[tuple[str, str, str]]:
    """(task id, experiment name, status) per `dvc queue status` row."""
    rows = []
    for line in _dvc("queue", "status", check=False).stdout.splitlines()[1:]:
        fields = line.split()
        status = next((s for s in ("Queued", "Running", "Success", "Failed") if s in fields), "")
        if len(fields) >= 2 and status:
            rows.append((fields[0], fields[1], status))
    return rows


def finished_experiments() -> set[str]:
    """Names of the experiments of the current baseline (`dvc exp list --name-only`)."""
    out = _dvc("exp", "list", "--name-only", check=False).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def to_queue(runs: list[tuple[str, dict[str, str]]], finished: set[str],
             pending: set[str]) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """(the runs still to queue, a line per run skipped): a run whose experiment exists (finished
    earlier) or that is queued or running now is not queued again. Re-running a grid after a
    partial one used to queue a duplicate of each, and duplicates overwrote each other."""
    todo, skipped = [], []
    for name, overrides in runs:
        if name in finished:
            skipped.append(f"{name}: finished earlier (dvc exp list), not queued again "
                           f"(`dvc exp remove {name}` to run it anew)")
        elif name in pending:
            skipped.append(f"{name}: already queued or running, not queued again")
        else:
            todo.append((name, overrides))
    return todo, skipped


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


def clean_dead_runs() -> list[str]:
    """With no queue worker alive: the runs DVC still lists as "Running" (their worker died:
    kill -9, a lost machine), their queue rows and temporary copies removed; their names.

    DVC never learns that the worker is gone: the row stays "Running" forever and the run's
    copy of the repository (`.dvc/tmp/exps/tmp*`, 27 MB for this project) stays on disk. This
    is what `dvc queue remove` does for a finished task (forget the celery result, purge its
    message: dvc/repo/experiments/queue/remove.py, DVC 3.67), done for an orphaned one, whose
    name `dvc queue remove` does not resolve; the copy's path is in the run's info file."""
    import json
    import shutil

    if workers_alive():
        return []
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    names: list[str] = []
    try:
        repo = Repo(".")
    except DvcException:  # not a DVC repository: the `dvc exp run --queue` after says so
        return names
    with repo:
        queue = repo.experiments.celery_queue
        for msg, entry in list(queue._iter_processed()):
            result = queue.celery.AsyncResult(msg.headers["id"])  # DVC's celery app
            if result.ready():
                continue
            names.append(entry.name or entry.stash_rev[:7])
            info = Path(queue.get_infofile_path(entry.stash_rev))
            try:
                root = Path(json.loads(info.read_text())["root_dir"]).resolve()
            except (OSError, ValueError, KeyError, TypeError):
                root = None
            exps = Path(repo.tmp_dir, "exps").resolve()
            if root is not None and root != exps and exps in root.parents:
                shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(info.parent, ignore_errors=True)
            try:
                result.forget()
            except FileNotFoundError:  # no result stored yet: the worker died before that
                pass
            if msg.delivery_tag:
                queue.celery.purge(msg.delivery_tag)
    return names


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
            dead = clean_dead_runs() if worker_dir == WORKER_DIR else []
            if dead:
                print(f"the queue worker died during {', '.join(dead)}: its \"Running\" "
                      "entry and temporary copy removed", flush=True)
            counts = queue_status()
            if not counts.get("Queued"):
                return counts | ({"Died": len(dead)} if dead else {})
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
            start_queue(jobs)
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


def run_grid(runs: list[tuple[str, dict[str, str]]], what: str, report_cmd: str, *,
             jobs: int = 1, dry_run: bool = False, no_wait: bool = False,
             timeout_min: float = 1200.0) -> dict[str, int] | None:
    """Queue `runs` ((name, overrides) pairs) and run them with `jobs` queue workers; None for
    `dry_run` / `no_wait`, else the queue's final counts after at most `timeout_min` minutes of
    waiting. PipelineError when every run failed (with the first one's log)."""
    data = dataset_override(load_params().data.raw)
    if jobs < 1:
        raise PipelineError("--jobs must be at least 1.")
    for name, overrides in runs:
        flags = " ".join(f"-S {k}={v}" for k, v in (overrides | data).items())
        print(f"{name}: dvc exp run --queue -n {name} {flags}")
    if dry_run:
        return None
    if not Path("dvc.yaml").is_file():
        raise PipelineError(f"run `pneumonia {what}` from the repository root (where dvc.yaml is).")
    dead = clean_dead_runs()  # rows a dead worker left "Running" would look pending forever
    if dead:
        print(f"removed the \"Running\" entries a dead queue worker left: {', '.join(dead)}")
    queued = queue_rows()
    todo, skipped = to_queue(runs, finished_experiments(),
                             {n for _, n, s in queued if s in ("Queued", "Running")})
    for line in skipped:
        print(line)
    for name, overrides in todo:
        _queue(name, overrides | data)
    start_queue(jobs)
    print(f"queued {len(todo)} experiments ({len(runs) - len(todo)} skipped), {jobs} "
          "worker(s): `dvc queue status` to follow", flush=True)
    if no_wait:
        return None
    deadline = time.monotonic() + timeout_min * 60
    for attempt in (1, 2):
        try:
            counts = wait_for_queue(max(1.0, deadline - time.monotonic()), report_cmd,
                                    jobs=jobs)
        except KeyboardInterrupt:
            print(interrupted_message(), file=sys.stderr, flush=True)
            raise
        print(f"queue finished: {counts}")
        missing = sorted({name for name, _ in runs} - finished_experiments())
        failed = {n for _, n, s in queue_rows() if s == "Failed"}
        lost = [n for n in missing if n not in failed]
        if not lost or attempt == 2:
            break
        # Neither an experiment nor failed: its worker died mid-run. Once more, those only.
        print(f"re-queueing {len(lost)} run(s) that left no experiment (their worker died): "
              f"{', '.join(lost)}", flush=True)
        for name, overrides in runs:
            if name in lost:
                _queue(name, overrides | data)
        start_queue(jobs)
    if counts.get("Failed") and not counts.get("Success"):
        raise PipelineError(
            f"all {counts['Failed']} queued experiments failed; the first one's log ends:\n"
            f"{first_failure()}\n`dvc queue logs NAME` shows each; fix, then "
            f"`dvc queue remove --failed` and run `pneumonia {what}` again."
        )
    if missing:
        # A run that failed, or whose worker died (its row may stay "Running" forever: DVC
        # never learns the worker is gone), is no experiment: never report a grid short.
        why = ", ".join(f"{n} ({'failed' if n in failed else 'no experiment recorded'})"
                        for n in missing)
        raise PipelineError(
            f"{len(missing)} of the {len(runs)} requested runs are missing: {why}. Run "
            f"`pneumonia {what}` again: it queues only the missing ones (finished runs are kept)"
            "; `dvc queue logs NAME` says why a run failed."
        )
    return counts


def _queue(name: str, overrides: dict[str, str]) -> None:
    cmd = ["exp", "run", "--queue", "-n", name]
    for key, value in overrides.items():
        cmd += ["-S", f"{key}={value}"]
    _dvc(*cmd)


def interrupted_message() -> str:
    """What Ctrl-C leaves behind: the queue runs on in the background, and how to stop it."""
    rows = queue_rows()
    queued = [n for _, n, s in rows if s == "Queued"]
    running = [n for _, n, s in rows if s == "Running"]
    return (
        f"interrupted: DVC's queue keeps running in the background (running: "
        f"{', '.join(running) or 'none'}; queued: {len(queued)}; workers: "
        f"{', '.join(map(str, workers_alive())) or 'none'}). `dvc queue status` to follow; to "
        "stop it: `dvc queue remove --queued` (the runs not started), then `dvc queue stop "
        "--kill` (the worker and its running experiment).")
