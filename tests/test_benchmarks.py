"""`make bench` smoke test: the harness runs every case at tiny sizes and writes complete JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import run as bench


@pytest.mark.slow  # ~1.5 min on 2 CPU cores: five subprocesses, each importing TensorFlow
def test_quick_harness_writes_every_case(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    rc = bench.main(["--quick", "--workdir", str(tmp_path / "work"), "--output", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["mode"] == "quick"
    m = doc["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["versions"]["tensorflow"] and m["date"]
    assert set(doc["cases"]) == set(bench.CASES)
    for name, case in doc["cases"].items():
        assert "error" not in case, (name, case.get("error"))
        assert isinstance(case["value"], (int, float)), name
        assert isinstance(case["ratio_to_goal"], (int, float)), name
        assert case["status"] in ("PASS", "MISS"), name
        assert case["summary"] and case["goal"]
    assert doc["cases"]["parallel"]["ingest"]["identical_outputs"]
    assert doc["cases"]["parallel"]["balance"]["identical_outputs"]


def test_verdict_and_goals() -> None:
    assert set(bench.GOALS) == set(bench.CASES)
    assert bench.verdict("input", 6.0) == ("PASS", 1.2)
    assert bench.verdict("memory", 5.0)[0] == "MISS"
    assert bench.verdict("step", None) == ("ERROR", None)


def test_cli_rejects_unknown_case(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--only", "nonsense"])
    assert "invalid choice" in capsys.readouterr().err
