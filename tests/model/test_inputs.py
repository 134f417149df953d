"""Input pipeline: labels, augmentation (never a flip), missing images, image size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumonia.errors import PipelineError
from pneumonia.model.inputs import (
    LABEL_INDEX,
    build_augmentation,
    check_images,
    labels_of,
    make_dataset,
    read_split,
    subset_rows,
)
from pneumonia.params import AugmentParams
from tests.trainkit import make_split


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    make_split(root)
    return root


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    return project


def test_labels_normal_is_0_pneumonia_is_1() -> None:
    assert LABEL_INDEX == {"NORMAL": 0, "PNEUMONIA": 1}
    rows = pd.DataFrame({"label": ["PNEUMONIA", "NORMAL", "PNEUMONIA"]})
    assert labels_of(rows) == [1, 0, 1]


def test_augmentation_never_flips() -> None:
    aug = build_augmentation(AugmentParams(rotation=10, zoom=0.1, shift=0.1, brightness=0.1), 1)
    names = [type(layer).__name__ for layer in aug.layers]
    assert names == ["RandomAffineBrightness"]  # rotation + zoom + shift + brightness, no flip
    layer = aug.layers[0]
    assert (layer.rotation, layer.zoom, layer.shift, layer.brightness) == (10, 0.1, 0.1, 0.1)
    # A horizontal flip would be the linear part [[-1, 0], [0, 1]]: determinant -1. Rotation and
    # zoom only ever give a positive determinant.
    import keras

    t = np.asarray(layer.transforms(2000, 224, 224, keras.random.SeedGenerator(0)))
    assert (t[:, 0] * t[:, 4] - t[:, 1] * t[:, 3] > 0).all()


def test_composed_transform_matches_the_ranges() -> None:
    """The one affine map per image = shift, then zoom and rotation about the centre, each
    drawn uniformly from the params' ranges (what RandomTranslation, RandomZoom and
    RandomRotation would draw)."""
    import keras

    aug = build_augmentation(AugmentParams(rotation=10, zoom=0.1, shift=0.1, brightness=0,
                                           zoom_independent=False), 1)
    t = np.asarray(aug.layers[0].transforms(4000, 224, 160, keras.random.SeedGenerator(3)))
    a = t[:, [0, 1, 3, 4]].reshape(-1, 2, 2)
    scale = np.sqrt(a[:, 0, 0] ** 2 + a[:, 1, 0] ** 2)
    angle = np.degrees(np.arctan2(a[:, 1, 0], a[:, 0, 0]))
    np.testing.assert_allclose(a[:, 0, 0], a[:, 1, 1], atol=1e-6)  # a rotation-scaling, no shear
    np.testing.assert_allclose(a[:, 0, 1], -a[:, 1, 0], atol=1e-6)
    assert 0.9 - 1e-5 <= scale.min() < 0.905 and 1.095 < scale.max() <= 1.1 + 1e-5
    assert -10 - 1e-4 <= angle.min() < -9.8 and 9.8 < angle.max() <= 10 + 1e-4
    # The output point that samples the input's centre is centre + shift: shift = p - c.
    c = np.array([(160 - 1) / 2, (224 - 1) / 2])  # (x, y) = (column, row)
    p = np.linalg.solve(a, (c - t[:, [2, 5]])[..., None])[..., 0]
    shift = (p - c) / np.array([160, 224])
    assert np.abs(shift).max() <= 0.1 + 1e-4 and np.abs(shift).max(axis=0).min() > 0.098
    assert t[:, 6:].max() == 0  # affine, not projective


def test_shift_only_moves_the_image_by_the_sampled_pixels() -> None:
    """Check the composed map on pixels: a shift-only transform moves a dot by (dx, dy)."""
    import keras

    aug = build_augmentation(AugmentParams(rotation=0, zoom=0, shift=0.25, brightness=0), 5)
    layer = aug.layers[0]
    x = np.zeros((1, 32, 32, 1), "float32")
    x[0, 16, 16, 0] = 255.0
    # The same draw twice: one seed generator state for the transform we inspect and apply.
    t = np.asarray(layer.transforms(1, 32, 32, keras.random.SeedGenerator(9)))
    y = np.asarray(keras.ops.image.affine_transform(x, t, fill_mode="nearest"))
    row, col = np.unravel_index(np.argmax(y[0, :, :, 0]), (32, 32))
    assert (col, row) == (round(16 - t[0, 2]), round(16 - t[0, 5]))


def test_augmentation_with_zero_ranges_is_identity() -> None:
    aug = build_augmentation(AugmentParams(rotation=0, zoom=0, shift=0, brightness=0), 1)
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 1)).astype("float32")
    np.testing.assert_array_equal(np.asarray(aug(x, training=True)), x)


def test_augmentation_changes_images_and_keeps_range() -> None:
    aug = build_augmentation(AugmentParams(), 3)
    assert aug.layers[0].compute_dtype == "float32"
    x = np.tile(np.linspace(0, 255, 32 * 32, dtype="float32").reshape(1, 32, 32, 1), (4, 1, 1, 1))
    y = np.asarray(aug(x, training=True))
    assert y.shape == x.shape
    assert np.abs(y - x).mean() > 1
    assert y.min() >= 0 and y.max() <= 255


def test_datasets_yield_rows_in_order_with_labels(in_project: Path) -> None:
    rows = subset_rows(read_split(), "test")
    ds = make_dataset(rows, 32, 16, training=False)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == (len(rows), 32, 32, 1) and x.dtype == np.float32
    assert y.reshape(-1).tolist() == labels_of(rows)
    from PIL import Image

    first = np.asarray(Image.open(rows["path"].iloc[0]), dtype="float32")
    np.testing.assert_array_equal(x[0, :, :, 0], first)

    train = subset_rows(read_split(), "train")
    aug = AugmentParams(rotation=0, zoom=0, shift=0, brightness=0)
    ds = make_dataset(train, 32, 8, training=True, seed=1, augment=aug)
    epoch1 = np.concatenate([y.numpy() for _, y in ds]).reshape(-1)
    assert sorted(epoch1.tolist()) == sorted(labels_of(train))  # a permutation of the rows


def test_missing_image_names_file_and_says_dvc_repro(in_project: Path) -> None:
    rows = subset_rows(read_split(), "val").copy()
    rows.loc[0, "path"] = "data/images/gone.png"
    with pytest.raises(PipelineError, match=r"data/images/gone\.png.*dvc repro"):
        check_images(rows, 32)


def test_image_size_mismatch_is_reported(in_project: Path) -> None:
    rows = subset_rows(read_split(), "val")
    with pytest.raises(PipelineError, match=r"data\.image_size.*64"):
        check_images(rows, 64)


def test_missing_split_csv(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="dvc repro"):
        read_split(tmp_path / "split.csv")
    assert not (tmp_path / "split.csv").exists()  # nothing created


@pytest.mark.parametrize(
    "content",
    [b"", b'image_id,path\n"IM-1,data/x.png\n', bytes(range(128, 256)), b"a,b\n1,2\n3,4,5,6\n"],
)
def test_garbled_split_csv_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "split.csv"
    path.write_bytes(content)
    with pytest.raises(PipelineError) as err:
        read_split(path)
    assert str(path) in str(err.value) and "dvc repro" in str(err.value)


def _decompose(t: np.ndarray) -> dict[str, np.ndarray]:
    """Angle (degrees), x/y zoom and shift (fractions of width/height) of (N, 8) transforms made
    as input = c + R(angle) diag(zx, zy) (p - c - d), for (height, width) = (32, 32)."""
    a = t[:, [0, 1, 3, 4]].reshape(-1, 2, 2)
    zx = np.hypot(a[:, 0, 0], a[:, 1, 0])
    zy = np.hypot(a[:, 0, 1], a[:, 1, 1])
    angle = np.degrees(np.arctan2(a[:, 1, 0], a[:, 0, 0]))
    c = np.array([15.5, 15.5])
    p = np.linalg.solve(a, (c - t[:, [2, 5]])[..., None])[..., 0]  # the point sampling c
    return {"angle": angle, "zx": zx, "zy": zy, "shift": (p - c) / 32,
            "det": a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]}


def test_independent_zoom_draws_x_and_y_apart_within_the_range() -> None:
    """zoom_independent (ImageDataGenerator's zoom_range): zx, zy each in [1 - z, 1 + z], drawn
    apart; false (RandomZoom): one factor for both."""
    import keras

    for independent in (True, False):
        aug = build_augmentation(AugmentParams(rotation=10, zoom=0.2, shift=0, brightness=0,
                                               zoom_independent=independent), 1)
        d = _decompose(np.asarray(aug.layers[0].transforms(
            3000, 32, 32, keras.random.SeedGenerator(4))))
        for z in (d["zx"], d["zy"]):
            assert 0.8 - 1e-5 <= z.min() < 0.81 and 1.19 < z.max() <= 1.2 + 1e-5
        if independent:
            assert np.abs(d["zx"] - d["zy"]).max() > 0.3
            assert abs(np.corrcoef(d["zx"], d["zy"])[0, 1]) < 0.1
        else:
            np.testing.assert_allclose(d["zx"], d["zy"], atol=1e-5)
        assert (d["det"] > 0).all()  # never a flip


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_brightness_modes(mode: str) -> None:
    """multiplicative (ImageDataGenerator brightness_range): x * f, f in [0.9, 1.1], black stays
    black; additive (RandomBrightness): x + o, o in [-25.5, 25.5], black borders lifted."""
    aug = build_augmentation(AugmentParams(rotation=0, zoom=0, shift=0, brightness=0.1,
                                           brightness_mode=mode), 2)
    x = np.tile(np.linspace(0, 200, 32 * 32, dtype="float32").reshape(1, 32, 32, 1),
                (256, 1, 1, 1))
    y = np.asarray(aug(x, training=True))
    if mode == "multiplicative":
        factor = y[:, -1, -1, 0] / x[:, -1, -1, 0]
        np.testing.assert_allclose(y, x * factor[:, None, None, None], rtol=1e-5, atol=1e-3)
        assert 0.9 - 1e-6 <= factor.min() < 0.91 and 1.09 < factor.max() <= 1.1 + 1e-6
        assert (y[:, 0, 0, 0] == 0).all()  # black stays black
    else:
        offset = y[:, -1, -1, 0] - x[:, -1, -1, 0]
        assert -25.5 - 1e-3 <= offset.min() < -24 and 24 < offset.max() <= 25.5 + 1e-3
        assert (y[:, 0, 0, 0] > 0).any()  # black borders lifted


def _batches(rows: pd.DataFrame, seed: int, aug: AugmentParams | None = None,
             epochs: tuple[int, int] = (0, 2)) -> list[np.ndarray]:
    ds = make_dataset(rows, 32, 16, training=True, seed=seed, augment=aug or AugmentParams(),
                      epochs=epochs)
    return [x.numpy() for x, _ in ds]


def test_augmented_batches_are_reproducible_from_the_seed(in_project: Path) -> None:
    """Stateless augmentation: the same seed gives byte-identical batches over 2 epochs (on a
    parallel map, in another dataset object), another seed other batches, epoch 2 other batches
    than epoch 1, and a dataset started at epoch 1 (a resumed run) epoch 1's batches."""
    from pneumonia.model.inputs import steps_per_epoch

    rows = subset_rows(read_split(), "train")
    steps = steps_per_epoch(len(rows), 16)
    a, b, other = _batches(rows, 1), _batches(rows, 1), _batches(rows, 2)
    assert len(a) == 2 * steps
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    assert all(x.tobytes() != y.tobytes() for x, y in zip(a, other, strict=True))
    assert all(x.tobytes() != y.tobytes() for x, y in zip(a[:steps], a[steps:], strict=True))
    resumed = _batches(rows, 1, epochs=(1, 2))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a[steps:], resumed, strict=True))
    # The augmentation too, not only the order: same order (zero ranges), other draws.
    plain = _batches(rows, 1, AugmentParams(rotation=0, zoom=0, shift=0, brightness=0))
    assert all(x.tobytes() != y.tobytes() for x, y in zip(a, plain, strict=True))


def test_another_keras_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The augmentation runs inside tf.data's graph on keras.ops, TensorFlow ops only under the
    TensorFlow backend: another KERAS_BACKEND gets a message saying what to set, not a failure
    deep in Keras. (No other backend is installed here, jax being absent: the reported backend
    is patched.)"""
    import keras

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(PipelineError, match=r"'jax' backend.*KERAS_BACKEND.*tensorflow"):
        build_augmentation(AugmentParams(), 1)
