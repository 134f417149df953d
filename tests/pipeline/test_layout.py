"""The layout contract: `stages/` holds the six stage entry points only, and each stage in dvc.yaml
depends on exactly the Python files it imports (transitively, also imports inside functions).

A module missing from a stage's deps is a stale-cache bug: change it, and DVC hands back outputs
built by the old code. An extra dep re-runs the stage for nothing.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

from pneumonia import code_closure

REPO = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "validate", "balance", "split", "train", "evaluate")


def import_closure(stage: str) -> set[str]:
    """Repository-relative posix paths of every project file `python -m stages.<stage>` imports,
    including the packages' __init__.py files Python runs on the way."""
    return {f.relative_to(REPO).as_posix() for f in code_closure.import_closure(REPO,
                                                                                 f"stages.{stage}")}


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


# The package's floors, lowest first: a module imports only from its own floor or below (imports
# inside functions count). Ground: paths, errors, files, params, the paper's published numbers.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", ("pneumonia", "pneumonia.errors", "pneumonia.paths", "pneumonia.files",
                "pneumonia.params", "pneumonia.params_cast", "pneumonia.published",
                "pneumonia.provenance", "pneumonia.stage_runner", "pneumonia.code_closure",
                "pneumonia.formatting")),
    ("tracking", ("pneumonia.tracking", "pneumonia.pipeline_run")),
    ("stats", ("pneumonia.stats",)),
    ("dataset", ("pneumonia.dataset",)),
    ("model", ("pneumonia.model",)),
    ("inference", ("pneumonia.inference",)),
    ("evaluation", ("pneumonia.evaluation", "pneumonia.gate", "pneumonia.registry")),
    ("site", ("pneumonia.site",)),  # a new hospital: uses inference and the registry
    ("experiments", ("pneumonia.experiments",)),
    ("tools", ("pneumonia.demo", "pneumonia.team", "pneumonia.promote")),
    ("commands", ("pneumonia.commands",)),  # argparse: each command's options, on the library
    ("cli", ("pneumonia.cli", "pneumonia.__main__")),
)


def package_modules() -> dict[str, Path]:
    """Every module of pneumonia/ by dotted name (a package by its own name)."""
    out: dict[str, Path] = {}
    for path in sorted((REPO / "pneumonia").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (at module level or inside functions)."""
    modules = package_modules()
    return {name: {m for m in code_closure.project_imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def layer_of(module: str) -> int:
    found = [i for i, (_, prefixes) in enumerate(LAYERS)
             if any(module == p or module.startswith(p + ".") for p in prefixes)]
    assert found, f"{module} is on no floor: add it to LAYERS (tests/pipeline/test_layout.py)"
    return max(found)  # `pneumonia` (ground) is a prefix of everything: the most specific wins


def test_imports_run_down_the_floors_only() -> None:
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, deps in import_graph().items() for b in sorted(deps)
              if layer_of(b) > layer_of(a)]
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_only_the_cli_imports_the_commands() -> None:
    """pneumonia/commands/ holds the command line's options: no library module (and no stage
    entry point) reaches up into it; pneumonia/cli.py dispatches to it."""
    from pneumonia import cli

    graph = import_graph()
    # cli imports its commands by name (importlib: --help needs them, a stage does not)
    targets = [m for m, _ in cli.COMMANDS.values()] + [
        t.partition(":")[0] for t, _, _ in (cli.TEAM_TOOLS | cli.TOOLS).values()]
    assert {t for t in targets if t.startswith("pneumonia.")} <= {
        m for m in package_modules() if m.startswith("pneumonia.commands") or
        m == "pneumonia.team.remote"}  # `pneumonia team push` parses its own arguments
    callers = sorted(a for a, deps in graph.items() for b in deps
                     if b.startswith("pneumonia.commands") and a != "pneumonia.cli"
                     and not a.startswith("pneumonia.commands"))
    assert not callers, f"modules that import pneumonia.commands: {callers}"


def test_the_library_is_free_of_argparse() -> None:
    """argparse lives in pneumonia/commands/ (and cli.py) only."""
    def imports_argparse(path: Path) -> bool:
        return any(isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names)
                   or isinstance(n, ast.ImportFrom) and n.module == "argparse"
                   for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))

    users = sorted(name for name, path in package_modules().items() if imports_argparse(path)
                   and not (name.startswith("pneumonia.commands") or name == "pneumonia.cli"))
    assert not users, f"library modules that use argparse: {users}"


def test_the_package_has_no_import_cycle() -> None:
    """No module reaches itself through imports (Tarjan's strongly connected components)."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_check_sees_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above would pass on an empty graph: they must fail on a real cycle."""
    graph = {"pneumonia.dataset.a": {"pneumonia.dataset.b"},
             "pneumonia.dataset.b": {"pneumonia.dataset.a"}}
    monkeypatch.setattr(sys.modules[__name__], "import_graph", lambda: graph)
    with pytest.raises(AssertionError, match="import cycles"):
        test_the_package_has_no_import_cycle()
    monkeypatch.setattr(sys.modules[__name__], "import_graph",
                        lambda: {"pneumonia.stats.x": {"pneumonia.evaluation.paper"}})
    with pytest.raises(AssertionError, match="upward"):
        test_imports_run_down_the_floors_only()


def test_training_depends_on_no_statistics_evaluation_inference_or_experiments() -> None:
    """A fix to the statistics (or the evaluation, the served model, the experiment reports)
    must never re-run a training: train's dvc.yaml deps hold none of their code."""
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    forbidden = ("pneumonia/stats/", "pneumonia/evaluation/", "pneumonia/inference/",
                 "pneumonia/experiments/")
    assert not [d for d in deps if str(d).startswith(forbidden)]
    assert not [f for f in import_closure("train") if f.startswith(forbidden)]
