"""The layout contract: `stages/` holds the six stage entry points only, and each stage in dvc.yaml
depends on exactly the Python files it imports (transitively, also imports inside functions).

A module missing from a stage's deps is a stale-cache bug: change it, and DVC hands back outputs
built by the old code. An extra dep re-runs the stage for nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "validate", "balance", "split", "train", "evaluate")


def _module_file(name: str) -> Path | None:
    """The repository file of a dotted module name (None for third-party modules)."""
    base = REPO / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Dotted names of the project modules `path` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from pneumonia.model import train` imports the submodule pneumonia.model.train
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in found if n.split(".")[0] in ("pneumonia", "stages")}


def import_closure(stage: str) -> set[str]:
    """Repository-relative posix paths of every project file `python -m stages.<stage>` imports,
    including the packages' __init__.py files Python runs on the way."""
    todo = [f"stages.{stage}"]
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):  # parent packages run their __init__.py
            init = _module_file(".".join(parts[:i]))
            if init is not None and init.name == "__init__.py":
                files.add(init)
        path = _module_file(name)
        if path is None:
            continue
        files.add(path)
        todo.extend(_imports(path))
    return {f.relative_to(REPO).as_posix() for f in files}


def test_stages_folder_holds_the_six_stages_only() -> None:
    modules = sorted(p.stem for p in (REPO / "stages").glob("*.py"))
    assert modules == sorted([*STAGES, "__init__"])
    assert not [p for p in (REPO / "stages").iterdir() if p.is_dir() and p.name != "__pycache__"]


def test_every_stage_depends_on_exactly_the_code_it_imports() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        declared = {d for d in dvc[stage]["deps"] if str(d).endswith(".py")}
        needed = import_closure(stage)
        assert f"stages/{stage}.py" in needed
        assert "pneumonia/params.py" in needed  # every stage reads params.yaml through it
        missing, extra = needed - declared, declared - needed
        assert not missing, f"dvc.yaml stage {stage} lacks deps {sorted(missing)}"
        assert not extra, f"dvc.yaml stage {stage} depends on code it never imports: {sorted(extra)}"


def test_closure_follows_imports_inside_functions(tmp_path: Path) -> None:
    """The walker must see lazy imports (heavy libraries are imported inside functions)."""
    # evaluate imports tracking at module level; train imports network only through `from ... import`
    assert "pneumonia/tracking.py" in import_closure("evaluate")
    assert "pneumonia/model/network.py" in import_closure("train")
    assert "pneumonia/model/train.py" not in import_closure("evaluate")
