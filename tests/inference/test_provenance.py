"""A model trained on the bundled sample is labelled as such: how the training data is named
(pneumonia.provenance), and the warnings of `pneumonia predict` and `pneumonia explain` for a
registered sample-trained model (the served model's answer: tests/test_registry.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from pneumonia import cli, provenance
from pneumonia.paths import TABLE1
from tests.conftest import SAMPLE

SAMPLE_FILES = sorted(p for p in SAMPLE.rglob("*") if p.is_file())


def manifest_of(files: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({
        "split": ["test" if "/test/" in f.as_posix() else "train" for f in files],
        "label": ["PNEUMONIA" if "PNEUMONIA" in f.as_posix() else "NORMAL" for f in files],
        "sha256": [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]})


def test_the_sample_and_any_part_of_it_are_named_sample(tmp_path: Path) -> None:
    assert len(SAMPLE_FILES) == 284
    assert provenance.classify(manifest_of(SAMPLE_FILES), SAMPLE) == "sample"
    assert provenance.classify(manifest_of(SAMPLE_FILES[::7]), SAMPLE) == "sample"  # a part
    # one file that is not in the sample: other data, whatever the folder is called
    stranger = tmp_path / "x.png"
    stranger.write_bytes(b"not a sample file")
    assert provenance.classify(manifest_of([*SAMPLE_FILES[:10], stranger]), SAMPLE) == "other"
    assert provenance.classify(manifest_of(SAMPLE_FILES), tmp_path / "gone") == "other"


def test_table1_counts_are_the_full_dataset_and_anything_else_other() -> None:
    rows = [{"split": s, "label": lbl, "sha256": f"{s}{lbl}{i}"}
            for (s, lbl), n in TABLE1.items() for i in range(n)]
    full = pd.DataFrame(rows)
    assert len(full) == 5856
    assert provenance.classify(full, SAMPLE) == "full"
    assert provenance.classify(full.iloc[1:], SAMPLE) == "other"
    # the fingerprint tells copies apart and does not depend on row order
    assert provenance.manifest_fingerprint(full) == provenance.manifest_fingerprint(full[::-1])
    assert provenance.manifest_fingerprint(full) != provenance.manifest_fingerprint(full.iloc[1:])


def test_only_the_sample_gets_a_warning() -> None:
    prov = {"dataset": "sample", "images": "284", "image_size": "64", "train_run_id": "abc"}
    text = provenance.warning(prov)
    assert text is not None and "bundled sample (284 images, 64 px, run abc)" in text
    assert provenance.warning({"dataset": "full"}) is None
    assert provenance.warning({}) is None and provenance.dataset_of({}) == "unknown"
    assert provenance.from_tags({**provenance.as_tags(prov), "other": "x"}) == prov


@pytest.fixture
def demo_champion(champion_store: dict[str, str], model_file: Path,
                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The tiny model logged as trained on the bundled sample, champion of `demo` in the
    inference tests' real store (as `make demo` leaves it)."""
    import mlflow

    from pneumonia.inference.pyfunc import log_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store["uri"])
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(champion_store["uri"])
    prov = {"dataset": "sample", "images": "284", "image_size": "32",
            "data_raw": "data/sample/chest_xray", "manifest_sha256": "0" * 64}
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("t").experiment_id) as run:
        uri = log_model(model_file, 0.5, provenance=prov)
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model("demo")
    except mlflow.exceptions.MlflowException:
        pass  # a previous test made it
    mv = client.create_model_version("demo", uri, run_id=run.info.run_id)
    client.set_registered_model_alias("demo", "champion", mv.version)
    return "models:/demo@champion"


def test_predict_and_explain_warn_about_a_sample_trained_model(
        demo_champion: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = min((SAMPLE / "test" / "NORMAL").iterdir())
    with pytest.raises(SystemExit) as exc:
        cli.main(["predict", str(image), "--model", demo_champion, "--out", "p.json"])
    err = capsys.readouterr().err
    assert exc.value.code in (0, None), err
    assert "WARNING: this model was trained on the bundled sample (284 images, 32 px" in err
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["provenance"]["dataset"] == "sample" and "bundled sample" in doc["warning"]

    with pytest.raises(SystemExit) as exc:
        cli.main(["explain", str(image), "--model", demo_champion, "--out", "cams"])
    err = capsys.readouterr().err
    assert exc.value.code in (0, None), err
    assert "WARNING: this model was trained on the bundled sample" in err
    assert len(list((tmp_path / "cams").glob("*.png"))) == 1

