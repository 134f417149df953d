"""The classifier: preprocessing inside the model, frozen layers, head, weights resolution."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest

from pneumonia.errors import PipelineError
from pneumonia.model.network import backbone_of, build_model, keras_models_dir, resolve_weights
from pneumonia.params import ModelParams


def _preprocessing_part(backbone: str, size: int = 32):
    """The model's layers up to (excluding) the backbone, as a standalone model."""
    import keras

    model = build_model(ModelParams(backbone=backbone, weights="none"), size, None)
    return keras.Model(model.input, model.get_layer(f"{backbone}_normalize").output)


@pytest.mark.parametrize(
    ("backbone", "module"),
    [("densenet201", "densenet"), ("densenet121", "densenet"), ("resnet50", "resnet50")],
)
def test_in_model_preprocessing_equals_keras_preprocess_input(backbone: str, module: str) -> None:
    import keras

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(4, 32, 32, 1)).astype("float32")
    rgb = np.repeat(gray, 3, axis=-1)  # what the model's gray_to_rgb layer produces
    expected = getattr(keras.applications, module).preprocess_input(rgb.copy())
    got = _preprocessing_part(backbone)(gray, training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-5, atol=1e-4)


def test_densenet201_last_30_layers_trainable_head_float32() -> None:
    import keras

    model = build_model(
        ModelParams(backbone="densenet201", weights="none", trainable_layers=30, dense_units=8),
        32,
        None,
    )
    base = backbone_of(model)
    trainable = [layer for layer in base.layers if layer.trainable]
    assert len(trainable) == 30
    assert trainable == base.layers[-30:]
    assert all(not layer.trainable for layer in base.layers[:-30])

    backbone_weights = sum(len(layer.trainable_weights) for layer in base.layers[-30:])
    head_weights = 4  # dense kernel+bias, output kernel+bias
    assert len(model.trainable_weights) == backbone_weights + head_weights
    assert backbone_weights > 0

    # The head and the last layers see the gradient; the output is a float32 probability.
    x = np.random.default_rng(1).uniform(0, 255, size=(3, 32, 32, 1)).astype("float32")
    out = keras.ops.convert_to_numpy(model(x, training=True))
    assert out.shape == (3, 1)
    assert ((out >= 0) & (out <= 1)).all()
    assert model.get_layer("pneumonia").dtype_policy.compute_dtype == "float32"
    assert not [layer for layer in model.layers if "flip" in layer.name.lower()]


def test_model_round_trips_without_custom_objects(tmp_path: Path) -> None:
    import keras

    model = build_model(
        ModelParams(backbone="densenet121", weights="none", dense_units=4), 32, None
    )
    x = np.random.default_rng(2).uniform(0, 255, size=(2, 32, 32, 1)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        atol=1e-6,
    )


def test_imagenet_weights_unreachable_says_which_file_to_put_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(PipelineError) as err:
        resolve_weights(ModelParams(backbone="densenet201", weights="imagenet"))
    msg = str(err.value)
    name = "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert f"https://storage.googleapis.com/tensorflow/keras-applications/densenet/{name}" in msg
    assert str(tmp_path / "kh" / "models" / name) in msg
    assert "model.weights" in msg and "none" in msg


def test_imagenet_weights_in_keras_cache_need_no_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cached = keras_models_dir() / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("network used"))
    assert resolve_weights(ModelParams(backbone="resnet50", weights="imagenet")) == "imagenet"
    assert resolve_weights(ModelParams(weights="none")) is None


def test_mixed_precision_keeps_output_and_augmentation_float32() -> None:
    import keras

    from pneumonia.model.inputs import build_augmentation
    from pneumonia.params import AugmentParams

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(
            ModelParams(backbone="densenet121", weights="none", dense_units=4), 32, None
        )
        aug = build_augmentation(AugmentParams(), 0)
        x = np.full((1, 32, 32, 1), 200.0, "float32")
        assert keras.ops.convert_to_numpy(model(x)).dtype == np.float32
        assert model.get_layer("dense").compute_dtype == "float16"  # the body does run in fp16
        assert keras.ops.convert_to_numpy(aug(x, training=True)).dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _densenet201_file(tmp_path: Path) -> Path:
    import keras

    path = tmp_path / "densenet201_notop.weights.h5"
    keras.applications.DenseNet201(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    ).save_weights(path)
    return path


def _bn_moving_means_after_one_step(weights: str | None, tmp_path: Path) -> tuple[list, list]:
    import keras

    params = ModelParams(backbone="densenet121", weights="none", trainable_layers=30, dense_units=4)
    model = build_model(params, 32, weights)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    bns = [
        layer for layer in backbone_of(model).layers[-30:]
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    before = [keras.ops.convert_to_numpy(bn.moving_mean).copy() for bn in bns]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(8, 32, 32, 1)).astype("float32")
    model.fit(x, rng.integers(0, 2, size=(8, 1)).astype("float32"), epochs=1, verbose=0)
    after = [keras.ops.convert_to_numpy(bn.moving_mean) for bn in bns]
    return before, after


# Slow (about a minute on 2 cores: two DenseNet121 fits).
@pytest.mark.slow
def test_batchnorm_statistics_frozen_when_pretrained_updated_from_scratch(tmp_path: Path) -> None:
    """Fine-tuning keeps BN in inference mode (pretrained statistics untouched, even in the
    trainable last layers); from random init BN must learn its statistics."""
    import keras

    weights_file = tmp_path / "densenet121_notop.weights.h5"
    keras.applications.DenseNet121(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    ).save_weights(weights_file)

    before, after = _bn_moving_means_after_one_step(str(weights_file), tmp_path)
    assert before and all(np.array_equal(b, a) for b, a in zip(before, after, strict=True))
    params = ModelParams(backbone="densenet201", weights="none", trainable_layers=30)
    base = backbone_of(build_model(params, 32, str(_densenet201_file(tmp_path))))
    last = base.layers[-30:]
    bn = [layer for layer in last if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)  # frozen = inference mode in Keras
    assert all(layer.trainable for layer in last if layer not in bn)

    before, after = _bn_moving_means_after_one_step(None, tmp_path)
    assert any(not np.array_equal(b, a) for b, a in zip(before, after, strict=True))

    # model.freeze_batchnorm: false (the paper read literally): pretrained, yet BN learns too.
    literal = ModelParams(backbone="densenet201", weights="none", trainable_layers=30,
                          freeze_batchnorm=False)
    last = backbone_of(build_model(literal, 32, str(_densenet201_file(tmp_path)))).layers[-30:]
    assert all(layer.trainable for layer in last)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in last)


def test_bn_momentum_reaches_every_batchnorm_layer() -> None:
    """model.bn_momentum: a from-scratch model of few steps needs moving statistics that settle
    (with Keras' 0.99 the demo predicted one constant class in inference mode)."""
    import keras

    params = ModelParams(backbone="densenet121", weights="none", bn_momentum=0.9, dense_units=4)
    bns = [layer for layer in backbone_of(build_model(params, 32, None)).layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) > 100 and {layer.momentum for layer in bns} == {0.9}
    default = ModelParams(backbone="densenet121", weights="none", dense_units=4)
    bns = [layer for layer in backbone_of(build_model(default, 32, None)).layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert {layer.momentum for layer in bns} == {0.99}


@pytest.mark.parametrize("kind", ["weights.h5", "legacy.h5", "garbage.h5"])
def test_weights_file_of_another_backbone_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    """`model.weights: resnet50 file` with `model.backbone: densenet201`: a PipelineError that
    names the file, the backbone and the fix, not Keras' traceback."""
    import keras

    path = tmp_path / f"resnet50.{kind}"
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    if kind == "weights.h5":
        resnet.save_weights(path)
    elif kind == "legacy.h5":  # the format of keras.applications' downloads
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, resnet)
    else:
        path.write_bytes(b"not an HDF5 file")
    params = ModelParams(backbone="densenet201", weights=str(path))
    with pytest.raises(PipelineError) as err:
        build_model(params, 32, resolve_weights(params))
    msg = str(err.value)
    assert str(path) in msg and "model.backbone: densenet201" in msg
    assert "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
