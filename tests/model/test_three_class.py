"""`task: three_class` (normal / bacteria / virus) through the pieces that change with it: the
targets and the binary view, the split (stratified by class), the balance rule, the softmax head
and its training loss, Grad-CAM per class, the served answer and `pneumonia predict`. The whole
pipeline as a DVC experiment: tests/pipeline/test_three_class_dvc.py (slow)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumonia.dataset import balance, ingest, split
from pneumonia.model import tasks
from pneumonia.paths import BALANCED_MANIFEST, SPLIT_CSV
from tests.conftest import make_params


def test_targets_and_the_binary_view() -> None:
    rows = pd.DataFrame({"label": ["NORMAL", "PNEUMONIA", "PNEUMONIA"],
                         "class": ["normal", "bacteria", "virus"]})
    np.testing.assert_array_equal(tasks.targets(rows, "binary"), [[0], [1], [1]])
    np.testing.assert_array_equal(tasks.targets(rows, "three_class"), np.eye(3))
    out = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    np.testing.assert_allclose(tasks.pneumonia_probability(out), [0.3, 0.9])
    np.testing.assert_allclose(tasks.pneumonia_probability(np.array([[0.25], [0.8]])),
                               [0.25, 0.8])
    np.testing.assert_allclose(tasks.class_probabilities(np.array([[0.25]])), [[0.75, 0.25]])
    with pytest.raises(ValueError, match="covid"):
        tasks.target_indices(pd.DataFrame({"class": ["covid"]}), "three_class")


def test_split_is_stratified_by_class() -> None:
    """Each of the three classes gets its share of validation images (binary stratification
    only balances NORMAL vs PNEUMONIA, and may put too few viral images in validation)."""
    rows = []
    for p in range(600):
        cls = ("normal", "bacteria", "virus")[p % 3 if p % 5 else 1]
        label = "NORMAL" if cls == "normal" else "PNEUMONIA"
        rows += [{"patient_id": f"p{p}", "label": label, "class": cls}] * (1 + p % 3)
    pool = pd.DataFrame(rows)
    chosen = split.assign_validation(pool, 0.2, 3, strata="class",
                                     values=("normal", "bacteria", "virus"))
    val = pool[pool.patient_id.isin(chosen)]
    for cls in ("normal", "bacteria", "virus"):
        n, n_val = (pool["class"] == cls).sum(), (val["class"] == cls).sum()
        assert abs(n_val - round(0.2 * n)) <= 2, cls


def test_balance_and_split_on_the_sample(workdir: Path, mini_raw: Path) -> None:
    """The three-class rule: every class smaller than the largest is grown by Augmentor to the
    largest one's count (the mini dataset: normal 7, bacteria 5, virus 2 training images)."""
    params = dataclasses.replace(make_params(mini_raw, balance={"target_normal": 99}),
                                 task="three_class")
    ingest.run(params)
    metrics = balance.run(params)
    assert metrics["class_before"] == {"normal": 7, "bacteria": 5, "virus": 2}
    assert metrics["class_after"] == {"normal": 7, "bacteria": 7, "virus": 7}
    assert metrics["class_targets"] == {"bacteria": 7, "virus": 7}  # target_normal unused
    assert metrics["normal_after"] == 7 and metrics["generated"] == 7
    generated = pd.read_csv(BALANCED_MANIFEST, keep_default_na=False)
    assert sorted(generated["class"]) == ["bacteria"] * 2 + ["virus"] * 5
    assert set(generated.label) == {"PNEUMONIA"}
    assert all(p.startswith("data/balanced/PNEUMONIA/") for p in generated.path)
    manifest = pd.read_csv("data/manifest.csv", keep_default_na=False).set_index("image_id")
    assert (manifest.loc[generated.source_image_id, "class"].to_numpy()
            == generated["class"].to_numpy()).all()  # a viral image grows from viral ones
    facts = split.run(params)
    assert facts["task"] == "three_class"
    s = pd.read_csv(SPLIT_CSV, keep_default_na=False)
    assert facts["class_counts"]["val"] == {
        c: int(((s.subset == "val") & (s["class"] == c)).sum()) for c in split.CLASSES}
    # binary, as before: no class keys in the metrics
    binary = make_params(mini_raw, balance={"target_normal": 9})
    assert "class_before" not in balance.run(binary)
    assert "class_counts" not in split.run(binary)


def _three_class_model(size: int = 32, seed: int = 1):
    import keras

    from pneumonia.model.network import build_model
    from pneumonia.params import ModelParams

    keras.utils.set_random_seed(seed)
    model = build_model(ModelParams(backbone="densenet121", weights="none", dense_units=8),
                        size, None, outputs=3)
    last = model.get_layer("pneumonia")
    kernel, bias = last.get_weights()
    last.set_weights([kernel * 40.0, bias])  # spread the probabilities
    return model


def test_softmax_head_loss_and_gradcam_per_class() -> None:
    from pneumonia.inference.gradcam import CamModel
    from pneumonia.model.train import class_weights

    model = _three_class_model()
    assert tasks.task_of(model) == "three_class"
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    out = np.asarray(model.predict_on_batch(x), dtype=float)
    assert out.shape == (4, 3) and np.allclose(out.sum(axis=1), 1, atol=1e-5)
    cam = CamModel(model)
    assert cam.softmax_head
    maps = {}
    for k in (0, 1, 2, "pneumonia", None):
        cams, prob = cam(x, k)
        np.testing.assert_allclose(prob, out[:, 1] + out[:, 2], atol=1e-5)
        assert cams.shape == (4, 32, 32) and np.isfinite(cams).all()
        maps[k] = cams
    # None = each image's own most probable class
    for i, k in enumerate(out.argmax(axis=1)):
        np.testing.assert_allclose(maps[None][i], maps[int(k)][i], atol=1e-6)
    rows = pd.DataFrame({"label": ["NORMAL"] * 6 + ["PNEUMONIA"] * 6,
                         "class": ["normal"] * 6 + ["bacteria"] * 4 + ["virus"] * 2})
    w = class_weights(rows, "three_class")
    assert w == pytest.approx({0: 12 / 18, 1: 1.0, 2: 2.0})  # n / (3 n_class)
    assert 6 * w[0] == pytest.approx(4 * w[1]) == pytest.approx(2 * w[2])


def test_served_answer_and_predict_columns(tmp_path: Path, capsys, monkeypatch) -> None:
    """The served table and `pneumonia predict`: three probabilities, P(PNEUMONIA) = bacteria +
    virus, the label at the threshold, and the conformal set when a calibration is given."""
    from pneumonia.cli import main
    from pneumonia.inference.pyfunc import answer, output_width
    from tests.conftest import SAMPLE

    out = np.array([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8], [0.4, 0.35, 0.25]])
    table = answer(out, 0.5, qhat=0.45)  # a label is in the set when P >= 0.55
    assert table.probability.tolist() == pytest.approx([0.3, 0.95, 0.6])
    assert table.label.tolist() == ["NORMAL", "PNEUMONIA", "PNEUMONIA"]
    assert table["class"].tolist() == ["normal", "virus", "normal"]
    assert table[["p_normal", "p_bacteria", "p_virus"]].to_numpy() == pytest.approx(out)
    assert table.prediction_set.tolist() == ["NORMAL", "PNEUMONIA", "PNEUMONIA"]
    assert table.refer.tolist() == [False, False, False]
    assert answer(out, 0.5, qhat=0.65).prediction_set.tolist()[2] == "NORMAL|PNEUMONIA"
    binary = answer(np.array([[0.2]]), 0.5)
    assert list(binary.columns) == ["probability", "label", "threshold"]  # as before

    model_file = tmp_path / "three.keras"
    _three_class_model().save(model_file)
    assert output_width(model_file) == 3
    images = sorted((SAMPLE / "test" / "PNEUMONIA").iterdir())[:3]
    csv_out = tmp_path / "p.json"
    with pytest.raises(SystemExit) as done:
        main(["predict", *map(str, images), "--model", str(model_file), "--out", str(csv_out),
              "--threshold", "0.5"])
    assert done.value.code == 0, capsys.readouterr().err
    rows = json.loads(csv_out.read_text())["predictions"]
    for row in rows:
        assert row["probability"] == pytest.approx(row["p_bacteria"] + row["p_virus"], abs=2e-6)
        assert row["class"] in ("normal", "bacteria", "virus")
        assert sum(row[f"p_{c}"] for c in ("normal", "bacteria", "virus")) == \
            pytest.approx(1, abs=1e-5)
        assert "prediction_set" not in row  # no calibration for a model file from elsewhere

    # The workspace's model: evaluate's calibration (metrics/details/evaluate.json) gives each
    # image a set
    workspace = tmp_path / "ws"
    (workspace / "models").mkdir(parents=True)
    (workspace / "metrics/details").mkdir(parents=True)
    model_file.rename(workspace / "models/model.keras")
    (workspace / "metrics/details/evaluate.json").write_text(json.dumps(
        {"threshold": 0.5, "conformal_qhat": 0.4}))
    monkeypatch.chdir(workspace)
    with pytest.raises(SystemExit) as done:
        main(["predict", *map(str, images), "--model", "models/model.keras", "--out", "p.json"])
    assert done.value.code == 0, capsys.readouterr().err
    doc = json.loads((workspace / "p.json").read_text())
    assert doc["conformal"]["qhat"] == 0.4
    for row in doc["predictions"]:
        p = row["probability"]
        expected = [lbl for lbl, q in (("NORMAL", 1 - p), ("PNEUMONIA", p)) if q >= 0.6]
        assert row["prediction_set"] == "|".join(expected)
        assert row["refer"] == (len(expected) != 1)
