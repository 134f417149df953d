"""The front door stays true: every relative link (and #anchor) in README.md, MODEL_CARD.md and
docs/*.md resolves; every `pneumonia ...` command, `make ...` target and `python -m ...` module
they show exists; every Makefile target is in the one table of targets; the README stays short
and names the paper first; MODEL_CARD.md's numbers are the ones metrics/ holds; CITATION.cff is
valid CFF 1.2.0."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from pneumonia import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "MODEL_CARD.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters, digits, `_`, `-`
    and spaces kept), spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link: its text
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", text_of(path)).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    return [t for t in LINK.findall(FENCE.sub("", text_of(path)))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: ...


def code_lines(path: Path) -> list[str]:
    """Command lines shown: lines of fenced blocks, and inline code spans."""
    text = text_of(path)
    lines = [ln for block in FENCE.findall(text) for ln in block.splitlines()[1:-1]]
    lines += INLINE_CODE.findall(FENCE.sub("", text))
    return [ln.strip().removeprefix("$ ").strip() for ln in lines]


def commands(path: Path, program: str) -> list[list[str]]:
    """`program ...` invocations (after env assignments such as `VAR=x`), split into words up to
    a comment; also after `&&` / `;` / `|`."""
    found = []
    for line in code_lines(path):
        line = line.split(" #", 1)[0]
        for part in re.split(r"&&|;|\|", line):
            words = part.split()
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words = words[1:]
            if words and words[0] == program and len(words) > 1 \
                    and not words[1].startswith(("…", "...", "<")):  # `pneumonia <verb>`, `make …`
                found.append(words[1:])
    return found


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w.-]*):(?!=)", text_of(ROOT / "Makefile"), re.MULTILINE))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    broken = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{path.name}: " + "; ".join(broken)


def test_link_checker_catches_a_broken_link_and_anchor(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## The paper says → we chose\n\n[x](b.md) "
                                   "[y](#the-paper-says--we-chose) [z](#nope)\n")
    assert anchors(tmp_path / "a.md") == {"title", "the-paper-says--we-chose"}
    assert links(tmp_path / "a.md") == ["b.md", "#the-paper-says--we-chose", "#nope"]


def test_every_pneumonia_command_shown_exists(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`pneumonia <verb> --help` (and `pneumonia team <verb> --help`) exits 0 for every verb
    the docs show."""
    verbs = set()
    for path in DOCS:
        for words in commands(path, "pneumonia"):
            verb = words[0]
            if verb.startswith("-"):
                continue
            verbs.add(f"team {words[1]}" if verb == "team" and len(words) > 1 else verb)
    assert {"predict", "compare", "ablation", "team up"} <= verbs  # the scan finds them
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the tools rename sys.argv[0]
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))  # ... and put the venv first
    monkeypatch.chdir(ROOT)
    failed = []
    for verb in sorted(verbs):
        with pytest.raises(SystemExit) as exc:
            cli.main([*verb.split(), "--help"])
        out = capsys.readouterr()
        if exc.value.code not in (0, None):
            failed.append(f"pneumonia {verb} --help: exit {exc.value.code} {out.err[-300:]}")
    assert not failed, "\n".join(failed)


def test_every_command_has_a_one_line_description(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["team", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        listing = capsys.readouterr().out
        names = [*cli.STAGES, *cli.COMMANDS, *cli.TOOLS, "team"] if argv == ["--help"] \
            else list(cli.TEAM_TOOLS)
        for name in names:
            assert re.search(rf"^\s+{re.escape(name)}\s*\n?\s+\S", listing, re.MULTILINE), name
    for stage in cli.STAGES:
        with pytest.raises(SystemExit) as exc:
            cli.main([stage, "--help"])
        assert exc.value.code == 0
        assert f"The `{stage}` stage of dvc.yaml" in " ".join(capsys.readouterr().out.split())


def test_command_defaults_are_shown_and_consistent(capsys: pytest.CaptureFixture[str]) -> None:
    """`compare --seed` defaults to evaluate's bootstrap seed (the same intervals for the same
    predictions), and `predict --help` shows its batch size default."""
    from pneumonia.params import EvaluateParams

    helps = {}
    for verb in ("compare", "predict"):
        with pytest.raises(SystemExit):
            cli.main([verb, "--help"])
        helps[verb] = " ".join(capsys.readouterr().out.split())
    seed = EvaluateParams().seed
    assert f"bootstrap seed (default {seed}, as evaluate.seed)" in helps["compare"]
    assert "images per forward pass (default 32)" in helps["predict"]
    assert "`chosen`" in helps["predict"]


def test_every_make_target_shown_exists() -> None:
    targets = makefile_targets()
    shown = {words[0] for path in DOCS for words in commands(path, "make")
             if not words[0].startswith("-")}
    assert {"demo", "test", "reproduce"} <= shown
    assert not shown - targets, f"make targets shown but not in the Makefile: {shown - targets}"


def test_every_make_target_is_in_the_one_table() -> None:
    """docs/layout.md's table of make targets lists each target of the Makefile."""
    layout = text_of(ROOT / "docs" / "layout.md")
    rows = set(re.findall(r"^\| `make ([\w.-]+)", layout, re.MULTILINE))
    assert rows == makefile_targets(), "docs/layout.md's make table and the Makefile differ"


def test_every_python_module_shown_exists() -> None:
    modules = {words[1] for path in DOCS for words in commands(path, "python")
               if words[0] == "-m" and len(words) > 1 and not words[1].startswith(("…", "<"))}
    assert "benchmarks.run" in modules
    missing = [m for m in sorted(modules)
               if m.split(".")[0] not in ("pip", "pytest") and importlib.util.find_spec(m) is None]
    assert not missing, missing


def test_readme_is_short_and_names_the_paper_first() -> None:
    lines = text_of(ROOT / "README.md").splitlines()
    assert len(lines) <= 200, len(lines)
    head = " ".join(lines[:8])
    assert "Deep Learning-Based Pneumonia Detection Using X-Ray Images" in head
    assert all(name in head for name in ("Marinissen", "Rekdal", "Rusten", "Svorkmo"))


def test_readme_ablation_figures_are_the_committed_ones() -> None:
    """The status table's ablation numbers are metrics/ablation.json's, as the card prints them."""
    from pneumonia.evaluation.card import ci

    arms = json.loads(text_of(ROOT / "metrics" / "ablation.json"))["arms"]
    readme = text_of(ROOT / "README.md")
    for row in arms.values():
        acc = row["accuracy"]
        assert ci(acc["mean"], acc["ci_low"], acc["ci_high"]) in readme


def test_model_card_numbers_are_generated_from_metrics(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exc:
        cli.main(["model-card", "--check"])
    assert exc.value.code == 0, capsys.readouterr().err
    card = text_of(ROOT / "MODEL_CARD.md")
    for field in ("Intended use", "Out-of-scope", "Training data", "Limitations",
                  "Ethical considerations", "Citation"):
        assert f"## {field}" in card, field
    assert "not for diagnosis" in card.lower()


def _copy_metrics(dst: Path) -> None:
    """The committed metrics files: each stage's headline (metrics/*.json) and the complete
    records kept in git beside them (metrics/details/*.json), which the model card reads."""
    (dst / "details").mkdir(parents=True)
    for f in (ROOT / "metrics").glob("*.json"):
        (dst / f.name).write_text(text_of(f))
    for f in (ROOT / "metrics" / "details").glob("*.json"):
        (dst / "details" / f.name).write_text(text_of(f))


def test_model_card_check_fails_on_a_hand_edited_number(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("MODEL_CARD.md", "dvc.lock"):
        (tmp_path / name).write_text(text_of(ROOT / name))
    _copy_metrics(tmp_path / "metrics")
    monkeypatch.chdir(tmp_path)
    card = tmp_path / "MODEL_CARD.md"
    arms = json.loads(text_of(tmp_path / "metrics" / "ablation.json"))["arms"]
    first = next(iter(arms.values()))["accuracy"]
    shown = f"{first['mean']:.3f} ["
    assert shown in card.read_text()
    card.write_text(card.read_text().replace(shown, "0.999 [", 1))
    with pytest.raises(SystemExit) as exc:
        cli.main(["model-card", "--check"])
    assert exc.value.code == 1 and "stale" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["model-card"])  # regenerates the block
    assert exc.value.code == 0
    assert card.read_text() == text_of(ROOT / "MODEL_CARD.md")


def test_model_card_reports_an_evaluated_model_with_intervals(tmp_path: Path) -> None:
    """With a paper-configuration evaluate.json, the card shows its metrics with intervals and
    the configuration dvc.lock records (here a made-up evaluate.json: the rendering is tested)."""
    from pneumonia.evaluation import card

    metrics = tmp_path / "metrics"
    _copy_metrics(metrics)
    (metrics / "evaluate.json").write_text(json.dumps({
        "n_test": 624, "n_patients": 427, "threshold": 0.5, "accuracy": 0.9, "accuracy_ci_low":
        0.87, "accuracy_ci_high": 0.93, "roc_auc": 0.95, "roc_auc_ci_low": 0.93,
        "roc_auc_ci_high": 0.97}))
    (metrics / "table3.json").write_text(json.dumps({"table3_consistent": 3, "table3_cells": 7}))
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"stages": {"train": {"params": {"params.yaml": {
        "model.backbone": "densenet201", "data.image_size": 224}}}}}))
    block = card.render(metrics, lock)
    assert "| accuracy | 0.900 [0.870, 0.930] |" in block
    assert "| ROC AUC | 0.950 [0.930, 0.970] |" in block
    assert "model.backbone densenet201, data.image_size 224" in block
    assert "3 of 7 cells" in block and "None yet" not in block
    without = card.render(tmp_path / "nothing", lock)
    assert "None yet" in without


def test_citation_cff_is_valid_cff_1_2_0() -> None:
    """Validated against the CFF 1.2.0 JSON schema. The schema file is the one cffconvert 2.0.0
    ships (tests/data/cff-1.2.0.schema.json, CC BY 4.0, citation-file-format.github.io):
    cffconvert itself pins jsonschema < 4, which would downgrade the jsonschema 4 that
    great_expectations brings, so the schema is used with the installed jsonschema."""
    import jsonschema

    schema = json.loads(text_of(ROOT / "tests" / "data" / "cff-1.2.0.schema.json"))
    cff = yaml.safe_load(text_of(ROOT / "CITATION.cff"))
    jsonschema.Draft7Validator(schema).validate(cff)
    assert cff["license"] == "MIT"
    dois = {ref.get("doi") for ref in cff["references"]}
    assert {"10.1016/j.cell.2018.02.010", "10.17632/rscbjbr9sj.2"} <= dois
    titles = [ref["title"] for ref in cff["references"]]
    assert "Deep Learning-Based Pneumonia Detection Using X-Ray Images" in titles
    bad = dict(cff, authors="nobody")
    assert not jsonschema.Draft7Validator(schema).is_valid(bad)  # the check can fail


def test_license_is_the_mit_license_pyproject_names() -> None:
    assert text_of(ROOT / "LICENSE").startswith("MIT License")
    assert re.search(r'^license = "MIT"', text_of(ROOT / "pyproject.toml"), re.MULTILINE)


def test_headline_table_lists_what_dvc_shows() -> None:
    """docs/experiments.md's table of the headline keys is pneumonia.paths.HEADLINE (and
    balance.json's keys, written whole), file by file: no key missing, none extra."""
    from pneumonia.paths import HEADLINE

    section = text_of(ROOT / "docs/experiments.md").split("## Reading runs in DVC")[1]
    rows = {m.group(1): m.group(2) for m in
            re.finditer(r"^\| `metrics/([a-z0-9_]+\.json)` \| (.*) \|$", section, re.MULTILINE)}
    expected = {**HEADLINE, "balance.json": ("normal_before", "pneumonia", "generated",
                                             "normal_after", "target", "method")}
    assert set(rows) == set(expected)
    for name, keys in expected.items():
        shown = {k for k in INLINE_CODE.findall(rows[name]) if not k.startswith("_")}
        listed = {k for k in keys if not k.endswith(("_ci_low", "_ci_high"))}
        assert shown == listed, name
        for key in set(keys) - listed:  # an interval's bounds: its metric's row names the suffix
            assert "`_ci_low`, `_ci_high`" in rows[name] and key.rsplit("_ci_", 1)[0] in shown
    # balance.json is written whole (pneumonia.dataset.balance): the keys above are its keys
    doc = json.loads((ROOT / "metrics/balance.json").read_text())
    assert set(doc) == set(expected["balance.json"])
    assert sum(len(k) for k in expected.values()) == 40  # the view a person reads
