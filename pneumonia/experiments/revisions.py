"""Read a pipeline output as it was at another revision: a git revision, a DVC experiment, or the
workspace.

The files compared across revisions (metrics/predictions.csv, metrics/evaluate.json, params.yaml)
are kept in git, so `git show REV:PATH` reads them; DVC experiments are git commits under
`refs/exps/`, found by their name (what `dvc exp show` lists). No DVC remote is needed.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from pneumonia.errors import PipelineError

WORKSPACE = "workspace"


@dataclass(frozen=True)
class Revision:
    """A resolved revision: what the user typed, and the commit (None = the workspace)."""

    name: str
    commit: str | None

    @property
    def label(self) -> str:
        return self.name if self.commit is None else f"{self.name} ({self.commit[:7]})"


def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise PipelineError("git is not installed: comparing revisions needs it.") from None


def experiments(cwd: Path | None = None) -> dict[str, str]:
    """DVC experiments of this repository: name -> commit (refs/exps/<..>/<baseline>/<name>)."""
    out = _git("for-each-ref", "--format=%(refname) %(objectname)", "refs/exps", cwd=cwd).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        ref, _, sha = line.partition(" ")
        parts = ref.split("/")
        # refs/exps/exec/* and refs/exps/celery/* are DVC's bookkeeping, not experiments.
        if len(parts) >= 5 and parts[2] not in ("exec", "celery", "runs"):
            found.setdefault(parts[-1], sha)
    return found


def resolve(name: str, cwd: Path | None = None) -> Revision:
    """`workspace`, a git revision (branch, tag, sha, HEAD~1) or a DVC experiment name."""
    if name == WORKSPACE:
        return Revision(name, None)
    proc = _git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", cwd=cwd)
    if proc.returncode == 0 and proc.stdout.strip():
        return Revision(name, proc.stdout.strip())
    exps = experiments(cwd)
    if name in exps:
        return Revision(name, exps[name])
    known = ", ".join(sorted(exps)[:10]) or "none"
    raise PipelineError(
        f"unknown revision {name!r}: it is neither a git revision (branch, tag, commit) nor a DVC "
        f"experiment of this repository (experiments: {known}). Check `git log --oneline` and "
        "`dvc exp show`, or use `workspace` for the files as they are now."
    )


def read_text(rev: Revision, path: str, cwd: Path | None = None) -> str:
    """The file `path` (repository-relative, posix) at `rev`; PipelineError if it is not there."""
    if rev.commit is None:
        file = (cwd or Path.cwd()) / path
        if not file.is_file():
            raise PipelineError(
                f"{path} not found in the workspace: run the pipeline first (`dvc repro`)."
            )
        return file.read_text(encoding="utf-8")
    proc = _git("show", f"{rev.commit}:{path}", cwd=cwd)
    if proc.returncode != 0:
        raise PipelineError(
            f"{path} is not in revision {rev.label}: that revision has no committed pipeline "
            f"results (run `dvc repro` there and commit {path}, or pick another revision)."
        )
    return proc.stdout


def named_experiments(prefix: str, command: str, cwd: Path | None = None) -> list[Revision]:
    """The DVC experiments named `<prefix>-*`, sorted by name, as revisions; PipelineError
    naming `command` (what queues them) when there is none."""
    found = {n: c for n, c in experiments(cwd).items() if n.startswith(f"{prefix}-")}
    if not found:
        raise PipelineError(
            f"no DVC experiment named {prefix}-* in this repository: run `{command}` "
            "first (`dvc exp show` lists the experiments)."
        )
    return [Revision(name, commit) for name, commit in sorted(found.items())]
