"""`pneumonia robustness` (pneumonia.evaluation.robustness) with a small model trained here on a
located signal (a bright square in the top-left quadrant = PNEUMONIA, as in test_gradcam): a
shift that destroys the image must come out significantly worse than the clean test set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumonia.dataset.images import encode_png
from pneumonia.evaluation.robustness import SHIFTS, Shift, _png, score_shifts, select_shifts
from tests.synthkit import synthetic_image, write_project

SIZE = 64


def _classifier():
    """A small convolutional net with the pipeline's input layout (gray pixels 0..255 in)."""
    import keras
    from keras import layers

    inp = keras.Input((SIZE, SIZE, 1), name="xray")
    x = layers.Rescaling(1 / 255.0)(inp)
    for filters in (8, 16):
        x = layers.MaxPooling2D()(layers.Conv2D(filters, 3, padding="same",
                                                activation="relu")(x))
    x = layers.Dense(8, activation="relu")(layers.GlobalMaxPooling2D()(x))
    return keras.Model(inp, layers.Dense(1, activation="sigmoid", name="pneumonia")(x))


@pytest.fixture(scope="module")
def trained():
    """Trained until it separates its training images (a start stuck on one class is retried
    with the next seed, as the tiny nets of test_gradcam sometimes are)."""
    import keras

    rng = np.random.default_rng(2)
    y = np.arange(160) % 2
    x = np.stack([synthetic_image(rng, SIZE, bool(v)) for v in y]).astype("float32")[..., None]
    for seed in (1, 2, 3, 4):
        keras.utils.set_random_seed(seed)
        model = _classifier()
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
        model.fit(x, y.astype("float32"), batch_size=32, epochs=10, verbose=0)
        if np.mean((model.predict(x, verbose=0).reshape(-1) >= 0.5) == y) >= 0.95:
            return model
    pytest.fail("the small classifier did not learn the signal with 4 seeds")


def _destroyed(img, rng: np.random.Generator) -> bytes:
    """Nothing of the image is left: background-like noise (NORMAL's texture) everywhere."""
    return _png(rng.normal(100, 20, (img.height, img.width)))


def test_destroying_shift_is_significantly_worse(trained) -> None:
    rng = np.random.default_rng(5)
    n = 80
    y = np.arange(n) % 2
    files = [encode_png(Image.fromarray(synthetic_image(rng, SIZE, bool(v)), "L")) for v in y]
    ids = [f"img{i}" for i in range(n)]
    groups = np.array([f"p{i // 2}" for i in range(n)])  # two images per patient
    shifts = (*SHIFTS, Shift("destroyed", "noise only", _destroyed))
    report = score_shifts(trained, files, ids, y, groups, 0.5, shifts, n_resamples=400, seed=1,
                          batch_size=32, workers=2)
    assert report["clean"]["roc_auc"]["value"] >= 0.95  # it learned the signal
    by_name = {s["name"]: s for s in report["shifts"]}
    assert list(by_name) == [s.name for s in shifts]
    gone = by_name["destroyed"]
    for metric in ("accuracy", "roc_auc"):
        d = gone[f"{metric}_delta"]
        assert d["verdict"] == "worse" and d["ci_high"] < 0, (metric, d)
        assert d["delta"] == pytest.approx(gone[metric]["value"]
                                           - report["clean"][metric]["value"])
    # every built-in shift is scored, with an interval around its value
    for s in SHIFTS:
        row = by_name[s.name]["roc_auc"]
        assert row["ci_low"] <= row["value"] <= row["ci_high"], s.name
    # a mild shift keeps the signal (a bright 16-px square survives JPEG quality 30)
    assert by_name["jpeg_30"]["roc_auc"]["value"] >= 0.9


def test_shifts_change_the_pixels_as_named() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(synthetic_image(rng, SIZE, True), "L")
    x = np.asarray(img, np.float64)
    by_name = {s.name: s for s in SHIFTS}

    def decoded(name: str) -> np.ndarray:
        data = by_name[name].apply(img, np.random.default_rng(1))
        with Image.open(__import__("io").BytesIO(data)) as out:
            return np.asarray(out.convert("L"), np.float64)

    np.testing.assert_array_equal(decoded("inverted"), 255 - x)
    assert decoded("resolution_0.5x").shape == (SIZE // 2, SIZE // 2)
    assert decoded("resolution_2x").shape == (2 * SIZE, 2 * SIZE)
    assert decoded("contrast_0.6").std() == pytest.approx(0.6 * x.std(), rel=0.02)
    assert decoded("gamma_1.5").mean() < x.mean() < decoded("gamma_0.67").mean()
    assert 15 < (decoded("noise_20") - x).std() < 25
    assert np.abs(decoded("jpeg_10") - x).mean() > np.abs(decoded("jpeg_30") - x).mean() > 0
    rotated = decoded("rotate_10")
    assert rotated[0, 0] == 0 and rotated.shape == x.shape  # black corners
    with pytest.raises(Exception, match="unknown shift"):
        select_shifts("jpeg_30,blur")


def _main(*argv: str) -> int:
    """`pneumonia ARGV` in this process (TensorFlow is already imported here)."""
    from pneumonia.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    return int(exit_.value.code or 0)


def test_command_writes_table_and_plot(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    write_project(tmp_path, size=SIZE, n={"train": 4, "val": 4, "test": 40})
    trained.save(tmp_path / "model.keras")
    monkeypatch.chdir(tmp_path)
    cmd = ["robustness", "--model", "model.keras", "--threshold", "0.5", "--resamples", "200",
           "--out", "out"]
    assert _main(*cmd, "--shifts", "jpeg_30,inverted") == 0
    report = json.loads((tmp_path / "out/robustness.json").read_text())
    assert [s["name"] for s in report["shifts"]] == ["jpeg_30", "inverted"]
    assert report["n_images"] == 40 and report["seconds"] > 0
    table = (tmp_path / "out/robustness.md").read_text()
    assert "| clean |" in table and "| inverted:" in table and "Δ ROC AUC" in table
    with Image.open(tmp_path / "out/robustness.png") as png:
        assert png.width > 500
    capsys.readouterr()
    assert _main(*cmd, "--shifts", "blur") == 2
    err = capsys.readouterr().err
    assert "unknown shift(s) blur" in err and "Traceback" not in err
