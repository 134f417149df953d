"""docs/params.md's reference is generated from pneumonia/params.py (one source), and params.yaml's
comments name the same choices as params.py."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pneumonia import params, params_doc

REPO = Path(__file__).resolve().parents[1]
SOURCE = Path(params.__file__).read_text(encoding="utf-8")


def test_the_reference_in_docs_is_the_generated_one() -> None:
    doc = REPO / params_doc.DOC
    assert params_doc.update(doc, params_doc.reference()) == doc.read_text(encoding="utf-8"), (
        f"{params_doc.DOC} is stale: run `pneumonia params-doc` and commit the result")


def test_a_changed_field_description_changes_the_reference() -> None:
    """The check above would pass on a generator that ignored params.py's comments."""
    planted = SOURCE.replace("# Adam learning rate (paper: 2e-6)", "# a planted description", 1)
    assert planted != SOURCE
    assert "a planted description" in params_doc.reference(planted)
    assert "a planted description" not in params_doc.reference()


def test_every_key_is_described() -> None:
    rows = [line for line in params_doc.reference().splitlines() if line.startswith("| `")]
    bare = [row.split(" | ")[0] for row in rows if row.rstrip().endswith("|  |")]
    assert len(rows) > 80 and not bare, f"keys without a comment in pneumonia/params.py: {bare}"


def literal_choices(section: str | None, key: str) -> set[str] | None:
    """The allowed values of params.yaml's `section.key` when params.py declares a choice."""
    cls = params.Params
    if section is not None:
        cls = typing.get_type_hints(cls)[section]
    tp = typing.get_type_hints(cls).get(key)
    if typing.get_origin(tp) is not typing.Literal:
        return None
    return {str(a) for a in typing.get_args(tp)}


def test_params_yaml_comments_list_the_choices_params_py_allows() -> None:
    """`key: value  # a (...) | b | c`: the alternatives a comment lists are the field's choices,
    all of them (params.yaml once listed three of the six backbones)."""
    checked, section = 0, None
    for line in (REPO / "params.yaml").read_text(encoding="utf-8").splitlines():
        top = re.match(r"^(\w+):\s*(#.*)?$", line)
        if top:
            section = top.group(1)
            continue
        m = re.match(r"^(\s*)(\w+):\s*[^#]+#\s*(.*)$", line)
        if not m or "|" not in m.group(3):
            continue
        choices = literal_choices(section if m.group(1) else None, m.group(2))
        if choices is None:
            continue
        listed = {re.match(r"[\w-]+", alt.strip()).group(0) for alt in m.group(3).split("|")}
        assert listed == choices, f"params.yaml {m.group(2)}: comment lists {sorted(listed)}, " \
                                  f"pneumonia/params.py allows {sorted(choices)}"
        checked += 1
    assert checked >= 10
