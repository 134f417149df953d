"""AdaBN: the BatchNorm statistics become the site's, nothing else changes."""

from __future__ import annotations

import numpy as np


def test_adabn_makes_inference_use_the_site_batch_statistics() -> None:
    import keras

    from pneumonia.model.network import build_model
    from pneumonia.params import ModelParams
    from pneumonia.site.adapt import adapt_batchnorm, batchnorm_layers

    keras.utils.set_random_seed(0)
    model = build_model(ModelParams(backbone="small_cnn", weights="none", dense_units=8,
                                    dropout=0.0), 32, None)
    bns = batchnorm_layers(model)
    assert len(bns) >= 4
    kernels = [w.copy() for w in model.get_weights()]
    # a shifted site: brighter, lower-contrast images than anything the statistics saw
    x = np.random.default_rng(1).normal(180, 10, (48, 32, 32, 1)).astype("float32")
    before = np.asarray(model(x, training=False))
    batch = np.asarray(model(x, training=True))  # normalised by the site batch's statistics
    assert not np.allclose(before, batch, atol=1e-3)
    model.set_weights(kernels)  # (that call moved the moving statistics a little)
    bns[0].trainable = False  # a frozen layer is adapted too, and stays frozen
    momenta = [b.momentum for b in bns]
    assert adapt_batchnorm(model, x) == len(bns)
    after = np.asarray(model(x, training=False))
    np.testing.assert_allclose(after, batch, atol=1e-4)
    assert [b.momentum for b in bns] == momenta and bns[0].trainable is False
    # only the BatchNorm moving statistics moved
    names = [w.path for w in model.weights]
    for name, old, new in zip(names, kernels, model.get_weights(), strict=True):
        if not name.endswith(("moving_mean", "moving_variance")):
            np.testing.assert_array_equal(old, new)


def test_adapt_refuses_too_few_images_and_bad_names(tmp_path, capsys) -> None:
    import pytest

    from pneumonia.cli import main
    from tests.site.conftest import write_pngs

    folder = write_pngs(tmp_path / "few", 10, 120, 1)[0].parent
    for argv, message in ((["--site", "ok-site"], "AdaBN needs at least 32"),
                          (["--site", "Bad Name"], "not a valid site name")):
        with pytest.raises(SystemExit) as ex:
            main(["site", "adapt", str(folder), *argv])
        assert ex.value.code == 2
        assert message in capsys.readouterr().err


def test_adabn_over_several_batches_averages_the_batches_statistics() -> None:
    """The traced pass (a graph, for memory) over 3 batches ends with the mean of the batches'
    statistics: the same as eager passes with momentum i / (i + 1)."""
    import keras

    from pneumonia.model.network import build_model
    from pneumonia.params import ModelParams
    from pneumonia.site.adapt import adapt_batchnorm, batchnorm_layers

    keras.utils.set_random_seed(0)
    model = build_model(ModelParams(backbone="small_cnn", weights="none", dense_units=8,
                                    dropout=0.0), 32, None)
    weights = model.get_weights()
    x = np.random.default_rng(2).normal(150, 30, (36, 32, 32, 1)).astype("float32")
    bns = batchnorm_layers(model)
    for layer in bns:
        layer.trainable = True
    for i in range(3):  # the eager reference
        for layer in bns:
            layer.momentum = i / (i + 1)
        model(x[i * 12:(i + 1) * 12], training=True)
    expect = [(np.asarray(b.moving_mean), np.asarray(b.moving_variance)) for b in bns]
    model.set_weights(weights)
    assert adapt_batchnorm(model, x, batch=12) == len(bns)
    for b, (mean, var) in zip(bns, expect, strict=True):
        np.testing.assert_allclose(np.asarray(b.moving_mean), mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(b.moving_variance), var, rtol=1e-4, atol=1e-3)
