"""`make bench` smoke test: the harness runs every case at tiny sizes and writes complete JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def test_gate_error_rates_at_reduced_reps() -> None:
    """benchmarks/gate_error_rates.py at 60 test sets per cell: a candidate truly the margin
    worse is rarely promoted by the non-inferiority rule (nominal 2.5 %), while the rule it
    replaced ("not significantly worse") promotes it most of the time when the models disagree
    on 10 % of the images; an equally good candidate passes more often than a margin-worse one."""
    from benchmarks.gate_error_rates import population, promote_rates

    codes, champion = population()
    worse = promote_rates(-0.02, 0.10, 0.02, 60, 1, codes, champion)
    assert worse["non_inferiority"] <= 0.08
    assert worse["not_significantly_worse"] >= 0.4
    equal = promote_rates(0.0, 0.035, 0.02, 60, 1, codes, champion)
    assert equal["non_inferiority"] >= 0.5 > worse["non_inferiority"]
    with pytest.raises(ValueError, match="discordance"):
        promote_rates(-0.05, 0.02, 0.02, 1, 0, codes, champion)


def test_the_simulation_s_interval_is_the_gate_s() -> None:
    """benchmarks/gate_error_rates.py sums per patient before resampling (fast); its interval
    must be the gate's own (pneumonia.gate.paired_accuracy) on the same simulated test set."""
    from benchmarks.gate_error_rates import PairedBootstrap, _draw, _members, population
    from pneumonia.gate import paired_accuracy

    codes, champion = population()
    members = _members(codes)
    boot, rng = PairedBootstrap(members.size.size), np.random.default_rng(4)
    for share in (0.02, 0.1):
        idx, groups, sizes = _draw(rng, members)
        a = champion[idx].astype(float)
        b = np.where(rng.uniform(size=a.size) < share, 1 - a, a)
        ref = paired_accuracy(np.zeros(a.size), a, b, groups)
        assert boot.interval(groups, a, b, sizes) == pytest.approx(
            (ref["ci_low"], ref["ci_high"]), abs=1e-12)


def test_equal_candidates_in_a_row_are_blocked_more_as_the_anchor_rises() -> None:
    """Issue 33 item 5 under today's gate: 20 candidates of equal true quality in a row. The
    anchor is the best of the champions' accuracies on this test set, so later candidates are
    blocked more often than the first; with a margin nothing can fail, nothing is blocked."""
    from benchmarks.gate_error_rates import population, sequence_block_rates

    codes, champion = population()
    got = sequence_block_rates(0.035, 0.02, 40, 1, codes, champion)
    ni = got["non_inferiority"]
    assert ni.shape == (20,) and ni[10:].mean() > ni[0] + 0.15
    assert (sequence_block_rates(0.035, 1.0, 5, 1, codes, champion)["non_inferiority"]
            == 0).all()
