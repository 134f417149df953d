"""The project files a module imports, transitively: imports inside functions included, and the
packages' __init__.py files Python runs on the way. The train stage hashes this closure into its
resume key (pneumonia.model.train); tests/pipeline/test_layout.py checks dvc.yaml's deps and the
package's layers against it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT_PACKAGES = ("pneumonia", "stages")


def module_file(root: Path, name: str) -> Path | None:
    """The file of a dotted module name under `root` (None for a module not in the project)."""
    base = root / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def project_imports(path: Path) -> set[str]:
    """Dotted names of the project modules `path` imports, wherever the import statement is
    (`from pneumonia.model import train` also names the submodule pneumonia.model.train)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in found if n.split(".")[0] in PROJECT_PACKAGES}


def import_closure(root: Path, module: str) -> list[Path]:
    """Every project file `python -m <module>` imports, sorted."""
    todo, seen, files = [module], set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):  # parent packages run their __init__.py
            init = module_file(root, ".".join(parts[:i]))
            if init is not None and init.name == "__init__.py":
                files.add(init)
        path = module_file(root, name)
        if path is None:
            continue
        files.add(path)
        todo.extend(project_imports(path))
    return sorted(files)
