"""dvc.lock is current at every commit: every stage it records has the command, the dependency
paths and the params of dvc.yaml, and every dependency kept in git, and every param, still has the
hash / value the lock recorded. DVC's own machinery decides (`Dependency.status()`, the check
behind `dvc status`, md5 as DVC computes it), not a re-implementation.

Dependencies outside git (the dataset, `data.raw`; outputs of earlier stages such as
data/manifest.csv) are not checked here: a clone does not have them. When this test fails, the
lock is stale: regenerate it as docs/reproducing.md says ("Regenerating dvc.lock").
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.conftest import REPO

FIX = ("dvc.lock is stale: regenerate it (docs/reproducing.md, \"Regenerating dvc.lock\") and "
       "commit it with the change")


def _git_files() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing tells which dependencies git keeps")
    return set(out.splitlines())


def _stale_entries() -> list[str]:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    tracked = _git_files()
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    stale = []
    with Repo(str(REPO)) as repo:
        stages = {s.name: s for s in repo.index.stages}
        for name, entry in lock.items():
            if name not in stages:
                stale.append(f"{name}: in dvc.lock, not in dvc.yaml")
                continue
            stage = stages[name]
            if entry["cmd"] != stage.cmd:
                stale.append(f"{name}: cmd {entry['cmd']!r} in the lock, {stage.cmd!r} in dvc.yaml")
            file_deps = [d for d in stage.deps if not isinstance(d, ParamsDependency)]
            locked = {d["path"] for d in entry.get("deps", [])}
            declared = {d.def_path for d in file_deps}
            for path in sorted(declared - locked):
                stale.append(f"{name}: dependency {path} is not in the lock")
            for path in sorted(locked - declared):
                stale.append(f"{name}: the lock records {path}, dvc.yaml no longer lists it")
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    for file, keys in dep.status().items():
                        changes = keys if isinstance(keys, dict) else {"(all)": keys}
                        stale += [f"{name}: param {k} {v} ({file})" for k, v in changes.items()]
                elif dep.def_path in tracked:
                    stale += [f"{name}: {p} {s}" for p, s in dep.status().items()]
    return stale


def test_dvc_lock_matches_the_working_tree() -> None:
    stale = _stale_entries()
    assert not stale, f"{FIX}:\n  " + "\n  ".join(stale)


def test_the_check_sees_a_changed_dependency(tmp_path, monkeypatch) -> None:
    """The check has teeth: a copy of the repository's tracked files whose lock records another
    md5 for one tracked dependency is reported, naming the stage and the file."""
    import shutil
    import sys

    copy = tmp_path / "repo"
    for rel in _git_files():
        src = REPO / rel
        if src.is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy / rel)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    lock = yaml.safe_load((copy / "dvc.lock").read_text())
    name, entry = next(iter(lock["stages"].items()))
    dep = next(d for d in entry["deps"] if d["path"].endswith(".py"))
    dep["md5"] = "0" * 32
    first_param_file = next(iter(entry["params"].values()))
    key = next(iter(first_param_file))
    first_param_file[key] = "not the value in params.yaml"
    (copy / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    monkeypatch.setattr(sys.modules[__name__], "REPO", copy)
    stale = "\n".join(_stale_entries())
    assert f"{name}: {dep['path']} modified" in stale
    assert f"{name}: param {key} modified" in stale
