"""pneumonia.files.write_metrics: a stage's headline (what DVC shows) and its complete record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pneumonia.files import headline, write_metrics
from pneumonia.paths import HEADLINE


def test_headline_keeps_the_keys_order_nesting_and_values() -> None:
    doc = {"b": 1, "counts": {"train": {"total": 5, "NORMAL": 2}, "val": {"total": 3}},
           "a": [1, 2], "c": None}
    assert headline(doc, ("c", "counts.val.total", "b", "counts.train.total", "missing",
                          "counts.test.total")) == {
        "c": None, "counts": {"val": {"total": 3}, "train": {"total": 5}}, "b": 1}
    assert list(headline(doc, ("c", "b"))) == ["c", "b"]


def test_write_metrics_writes_the_record_whole_and_the_headline_from_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    record = {"seconds": 3.5, "epochs_run": 2, "best_val_loss": 0.4, "device": "CPU",
              "class_weight": {"0": 1.2, "1": 0.8}, "best_val_accuracy": 0.9}
    details = write_metrics(record, Path("metrics/train.json"))
    assert details == Path("metrics/details/train.json")
    assert json.loads(details.read_text()) == record
    shown = json.loads(Path("metrics/train.json").read_text())
    assert list(shown) == list(HEADLINE["train.json"])
    assert shown == {k: record[k] for k in HEADLINE["train.json"]}
