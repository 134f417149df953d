"""The product imports no private Keras module: `keras.src.*` (Keras' implementation package)
may move or vanish in any Keras release, while `keras.*` / `tf.keras.*` public names are kept.

Tests and the benchmark harness may reach into Keras internals (e.g. the legacy H5 writer that
builds a test file); the shipped code in pneumonia/ and stages/ may not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("pneumonia", "stages")
# What `grep -r "keras.src"` finds (the dot matches any character, so keras/src too).
PRIVATE_TEXT = re.compile(r"keras.src")


def private_imports(source: str) -> list[str]:
    """`keras.src` modules that `source` imports: import / from-import statements, and
    importlib.import_module / __import__ calls with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [n for n in names if n == "keras.src" or n.startswith("keras.src.")]
    return found


def product_files() -> list[Path]:
    return sorted(p for d in PRODUCT for p in (REPO / d).rglob("*.py"))


def test_product_imports_no_private_keras() -> None:
    files = product_files()
    assert len(files) > 40  # the scan sees the package, not an empty folder
    offenders = {str(p.relative_to(REPO)): private_imports(p.read_text()) for p in files}
    assert {f: m for f, m in offenders.items() if m} == {}
    # ... and not even in a comment or string: `grep -r "keras.src" pneumonia/ stages/` is empty.
    texts = [str(p.relative_to(REPO)) for p in files if PRIVATE_TEXT.search(p.read_text())]
    assert texts == []


@pytest.mark.parametrize(
    "source",
    [
        "from keras.src.layers.preprocessing.data_layer import DataLayer\n",
        "import keras.src.ops as o\n",
        "def f():\n    import keras.src\n",
        "import importlib\nimportlib.import_module('keras.src.legacy.preprocessing.image')\n",
        "__import__('keras.src.saving')\n",
    ],
)
def test_the_scan_catches_each_form_of_private_import(source: str) -> None:
    assert private_imports(source)


def test_public_imports_pass_the_scan() -> None:
    assert private_imports("import keras\nfrom keras import ops, layers\n"
                           "import tensorflow as tf\nfrom keras.srcery import x\n") == []
