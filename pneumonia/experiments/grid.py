"""Grids of queued DVC experiments: what `pneumonia ablation` and `pneumonia recipe` share.

A grid is a list of (experiment name, `-S` overrides). `run_grid` queues each as
`dvc exp run --queue -n NAME -S ...`, starts the queue (one worker by default: DVC's queue has
open races with several), waits for it and says why when every run failed. Ctrl-C stops the
grid's own queued and running runs (stop_runs) and says what it stopped. The reports read the
finished experiments from their git commits (pneumonia.experiments.revisions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

from pneumonia.errors import PipelineError
from pneumonia.params import load_params


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _dvc(*args: str, check: bool = True,
         timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """`dvc ARGS` in this interpreter's environment; PipelineError when it fails (`check`) or has
    not answered after `timeout` seconds (then it is killed: the stop of a grid must not wait on
    one hung `dvc` call past its own limit)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], env=_env(),
                              capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"`dvc {' '.join(args)}` did not answer in {timeout:.0f} s (killed); "
                            "`dvc queue status` shows the queue as it is.") from None
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


def _queue_and_wait(runs: list[tuple[str, dict[str, str]]], data: dict[str, str],
                    report_cmd: str, jobs: int, no_wait: bool, timeout_min: float
                    ) -> tuple[dict[str, int] | None, list[str], set[str]]:
    """Queue what is not finished nor pending, start the queue, wait (re-queueing once the runs
    a dead worker lost): (the queue's counts or None for `no_wait`, missing runs, failed runs)."""
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
          "worker(s): `dvc queue status` to follow; Ctrl-C stops them", flush=True)
    if no_wait:
        return None, [], set()
    deadline = time.monotonic() + timeout_min * 60
    for attempt in (1, 2):
        counts = wait_for_queue(max(1.0, deadline - time.monotonic()), report_cmd,
                                jobs=jobs)
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
    return counts, missing, failed


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
    names = [name for name, _ in runs]
    try:
        counts, missing, failed = _queue_and_wait(runs, data, report_cmd, jobs,
                                                  no_wait, timeout_min)
    except KeyboardInterrupt:
        _stop_on_interrupt(names)
        raise
    if counts is None:
        return None
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


def pending_runs(names: Collection[str]) -> tuple[list[str], dict[str, dict]]:
    """(queued names, {running name: its run}) for those of `names` that DVC's queue still
    holds. A run is {"process": True / False / None (its `dvc exp exec-run` process alive /
    exited / not started yet), "copy": its temporary copy of the repository or None}. Read from
    the queue's broker, result and process files (DVC's API), not `dvc queue status`, which also
    broadcasts to the workers (see wait_for_queue): this is read every second while a worker
    runs."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        queue = repo.experiments.celery_queue
        queued = sorted({e.name for e in queue.iter_queued() if e.name in names})
        running: dict[str, dict] = {}
        for entry in queue.iter_active():
            if entry.name not in names:
                continue
            info = queue.proc.get(entry.stash_rev)
            alive = None if info is None else info.returncode is None and _alive(info.pid)
            running[entry.name] = {"process": alive,
                                   "copy": _copy_of(queue.get_infofile_path(entry.stash_rev))}
    return queued, running


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or ") Z " not in stat.read_text(errors="replace")


def _copy_of(infofile: str) -> str | None:
    """The temporary copy a queued run works in (its info file's root_dir), or None."""
    try:
        return str(json.loads(Path(infofile).read_text())["root_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# The longest one `dvc queue remove / kill` may take while a grid is being stopped (seconds:
# 3-10 s each on 2 cores under load; a call that hangs ends the stop with what is left).
DVC_CALL_S = 120.0


def stop_runs(names: Collection[str], grace_s: float = 60.0, poll_s: float = 1.0,
              limit_s: float = 180.0) -> dict[str, list[str]]:
    """Stop the runs of `names` that DVC's queue holds: the queued ones removed (`dvc queue
    remove`), the running ones interrupted (`dvc queue kill`: SIGINT to the run's process group,
    as Ctrl-C would; `-f`, SIGKILL, once `grace_s` has passed), then waited for until their
    worker has finished them and deleted their temporary copies; their "Failed" rows removed.

    Returns {"removed": queued runs removed, "killed": running runs stopped, "finished": runs
    that finished before they could be stopped (kept: experiments), "left": runs still queued
    or running, or whose copy is still there, after `limit_s`}. Other experiments in the queue
    are not touched. Two races of DVC 3.67 are avoided: a run can move from queued to running
    between a listing and a `dvc queue remove` (which then refuses the whole list: every step
    re-reads the queue and retries); and `dvc queue kill` of a run whose process has not started
    yet, or has already exited, marks it failed in the result store while its worker goes on
    (setting up, or collecting and deleting its copy) — so a run is asked to stop only while
    its process is alive, and it counts as stopped only once it has left the queue's active
    runs and its copy is gone."""
    import shutil

    names = set(names)
    removed: set[str] = set()
    asked: dict[str, float] = {}  # name: when first asked to stop
    forced: set[str] = set()
    copies: dict[str, str] = {}
    start = time.monotonic()
    while True:
        queued, running = pending_runs(names)
        for name, run in running.items():
            if run["copy"]:
                copies[name] = run["copy"]
        left_copies = [n for n, c in copies.items() if n not in running and Path(c).exists()]
        if not queued and not running and not left_copies:
            break
        if time.monotonic() - start > limit_s:
            if not workers_alive():  # nothing will delete them: as clean_dead_runs does
                exps = Path(".dvc/tmp/exps").resolve()
                for name in left_copies:
                    copy = Path(copies[name]).resolve()
                    if exps in copy.parents:
                        shutil.rmtree(copy, ignore_errors=True)
                left_copies = [n for n in left_copies if Path(copies[n]).exists()]
            return {"removed": sorted(removed), "killed": sorted(set(asked) - set(running)),
                    "finished": [], "left": sorted(set(queued) | set(running) | set(left_copies))}
        if queued and _dvc("queue", "remove", *queued, check=False,
                           timeout=DVC_CALL_S).returncode == 0:
            removed.update(queued)
        now = time.monotonic()
        for name, run in running.items():
            if run["process"] is not True:
                continue  # not started yet, or exited: its worker finishes it, then we look again
            if name not in asked:
                _dvc("queue", "kill", name, check=False, timeout=DVC_CALL_S)
                asked[name] = now
            elif now - asked[name] > grace_s and name not in forced:
                _dvc("queue", "kill", "-f", name, check=False, timeout=DVC_CALL_S)
                forced.add(name)
        time.sleep(poll_s)
        if not workers_alive():  # a killed worker leaves its run "Running" forever
            clean_dead_runs()
    finished = sorted(set(asked) & finished_experiments())
    stopped = sorted(set(asked) - set(finished))
    if stopped:  # their rows say "Failed": not failures of the grid, an interruption
        _dvc("queue", "remove", *stopped, check=False, timeout=DVC_CALL_S)
    return {"removed": sorted(removed - set(asked)), "killed": stopped, "finished": finished,
            "left": []}


def _stop_on_interrupt(names: list[str]) -> None:
    """Ctrl-C during a grid: stop its own runs in DVC's queue and say what was stopped and what
    was not. A second Ctrl-C leaves the rest as it is, and says what that is."""
    print("\ninterrupted: stopping this grid's runs in DVC's queue (Ctrl-C again to leave them "
          "running)...", file=sys.stderr, flush=True)
    try:
        result = stop_runs(names)
    except KeyboardInterrupt:
        print(left_running_message(names), file=sys.stderr, flush=True)
        return
    except (PipelineError, OSError) as exc:  # DVC's repository unreadable, a dvc call failed
        print(f"could not stop the grid's runs: {exc}\n{left_running_message(names)}",
              file=sys.stderr, flush=True)
        return
    lines = []
    if result["killed"]:
        lines.append(f"stopped (were running, their temporary copies removed): "
                     f"{', '.join(result['killed'])}")
    if result["removed"]:
        lines.append(f"removed from the queue (not started): {', '.join(result['removed'])}")
    if result["finished"]:
        lines.append(f"finished before they could be stopped (kept as experiments): "
                     f"{', '.join(result['finished'])}")
    if result["left"]:
        lines.append(f"COULD NOT STOP {', '.join(result['left'])}: still in DVC's queue. "
                     "`dvc queue status`; `dvc queue kill -f NAME`, `dvc queue remove NAME`, or "
                     "`dvc queue stop --kill` (every worker and run)")
    if not lines:
        lines.append("nothing of this grid was queued or running")
    finished = sorted(finished_experiments() & set(names))
    lines.append(f"{len(finished)} of the grid's {len(names)} runs are finished experiments "
                 "(kept); running the same command again queues only the others.")
    print("\n".join(lines), file=sys.stderr, flush=True)


def left_running_message(names: Collection[str]) -> str:
    """What is left in DVC's queue of `names` when stopping was not possible, and how to stop it."""
    try:
        queued, active = pending_runs(set(names))
        running = sorted(active)
    except Exception:  # noqa: BLE001 - a best-effort message on the way out
        queued, running = [], []
    return (
        f"left in DVC's queue: running: {', '.join(running) or 'none'}; queued: "
        f"{', '.join(queued) or 'none'} (workers: {', '.join(map(str, workers_alive())) or 'none'})"
        ". To stop them: `dvc queue remove NAME` (queued), `dvc queue kill NAME` (running); "
        "`dvc queue status` to follow.")
