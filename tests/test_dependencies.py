"""Every import declared: the deptry checks of `make lint` pass on the product, and they fail
on each mistake they exist for (an undeclared import, a dev tool or a `team` package imported
by the product, a declared package nobody uses). The commands are read from the Makefile, so
this test runs exactly what `make lint` runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def lint_commands() -> list[list[str]]:
    """The deptry lines of the Makefile's lint target, as argument lists."""
    makefile = (REPO / "Makefile").read_text()
    lines = re.findall(r"^\t\$\(VENV\)/bin/(deptry .*)$", makefile, re.MULTILINE)
    assert len(lines) == 2, lines
    return [[str(BIN / "deptry"), *line.split()[1:]] for line in lines]


def run_all(root: Path) -> list[subprocess.CompletedProcess[str]]:
    """Each deptry command of `make lint` in `root`, output without colour codes."""
    procs = [subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
             for cmd in lint_commands()]
    for p in procs:
        p.stdout, p.stderr = ANSI.sub("", p.stdout), ANSI.sub("", p.stderr)
    return procs


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pneumonia/, stages/ and pyproject.toml in a scratch folder, for planting mistakes."""
    root = tmp_path_factory.mktemp("deps")
    for d in ("pneumonia", "stages"):
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root)
    return root


def test_the_product_declares_every_import() -> None:
    for proc in run_all(REPO):
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("where", "source", "rule", "name"),
    [
        ("pneumonia/dataset/_planted.py", "import attr\n", "DEP003", "attr"),  # transitive only
        ("stages/_planted.py", "import pytest\n", "DEP004", "pytest"),  # dev tool in the product
        ("pneumonia/model/_planted.py", "import boto3\n", "DEP004", "boto3"),  # team extra
    ],
)
def test_a_planted_import_fails_the_check(copy: Path, where: str, source: str, rule: str,
                                          name: str) -> None:
    planted = copy / where
    planted.write_text(source)
    try:
        out = "".join(p.stdout + p.stderr for p in run_all(copy))
    finally:
        planted.unlink()
    assert re.search(rf"{re.escape(where)}:1:\d+: .*{rule} '{name}'", out), out


def test_a_declared_but_unused_package_fails_the_check(copy: Path) -> None:
    pyproject = copy / "pyproject.toml"
    original = pyproject.read_text()
    pyproject.write_text(original.replace('"requests==2.34.2",', '"requests==2.34.2", '
                                          '"colorama==0.4.6",', 1))
    try:
        out = run_all(copy)[0]
    finally:
        pyproject.write_text(original)
    assert out.returncode != 0 and "DEP002 'colorama'" in out.stdout + out.stderr
