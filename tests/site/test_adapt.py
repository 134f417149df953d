"""AdaBN: the BatchNorm statistics become the site's, nothing else changes."""

from __future__ import annotations

import numpy as np
import pytest


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


def test_balanced_draw_resamples_to_the_training_class_mix_without_labels() -> None:
    from pneumonia.site.adapt import balanced_draw

    rng = np.random.default_rng(0)
    # a site the model calls 80 % pneumonia (its probabilities only; no labels anywhere),
    # confidently: the resample's predicted mix is the training prior's
    sure = np.r_[np.full(800, 0.999), np.full(200, 0.001)]
    pick = balanced_draw(sure, 0.5, 0.5, np.random.default_rng(1), size=20000)
    assert np.mean(sure[pick] >= 0.5) == pytest.approx(0.5, abs=0.02)
    pick = balanced_draw(sure, 0.5, 0.3, np.random.default_rng(1), size=20000)
    assert np.mean(sure[pick] >= 0.5) == pytest.approx(0.3, abs=0.02)  # another prior
    # less confident: part of each image counts for the other class; the mix moves toward
    # the prior, not all the way (0.8 -> about 0.62 here)
    prob = np.r_[rng.uniform(0.7, 1.0, 800), rng.uniform(0.0, 0.3, 200)]
    assert np.mean(prob >= 0.5) == 0.8  # plain AdaBN would see this mix
    share = np.mean(prob[balanced_draw(prob, 0.5, 0.5, np.random.default_rng(1), 20000)] >= 0.5)
    assert 0.55 < share < 0.7
    # a site already at the training mix is drawn (about) uniformly
    even = np.r_[np.full(500, 0.9), np.full(500, 0.1)]
    counts = np.bincount(balanced_draw(even, 0.5, 0.5, np.random.default_rng(2), 100000),
                         minlength=1000)
    assert counts.min() > 60 and counts.max() < 150  # 100 expected per image
    # the same seed, the same resample; every image called one class still gives a draw
    assert (balanced_draw(prob, 0.5, 0.5, np.random.default_rng(3))
            == balanced_draw(prob, 0.5, 0.5, np.random.default_rng(3))).all()
    assert balanced_draw(np.full(40, 0.9), 0.5, 0.5, np.random.default_rng(4)).size == 40


@pytest.mark.slow  # TensorFlow, a registered model, three adaptations: ~1-2 min on 2 idle cores
def test_adapt_command_registers_class_balanced_adabn_and_leaves_the_champion(
        store, tmp_path, capsys) -> None:
    import keras
    import mlflow

    from pneumonia.cli import main
    from pneumonia.site.adapt import batchnorm_layers
    from tests.site.conftest import NAME, write_pngs

    folder = tmp_path / "ward"
    write_pngs(folder, 30, 170, 5, "b")  # a site mostly of one kind of image
    write_pngs(folder, 6, 60, 6, "d")
    saved = {}
    for mix in ("training", "site"):
        out = tmp_path / f"{mix}.keras"
        with pytest.raises(SystemExit) as ex:
            main(["site", "adapt", str(folder), "--site", "ward-a", "--class-mix", mix,
                  "--dry-run", "--save", str(out)])
        assert ex.value.code == 0, capsys.readouterr().err
        model = keras.saving.load_model(out, compile=False)
        saved[mix] = [np.asarray(b.moving_mean) for b in batchnorm_layers(model)]
    # the resample changed the statistics the site's images gave
    assert any(not np.allclose(a, b) for a, b in zip(saved["training"], saved["site"],
                                                      strict=True))
    with pytest.raises(SystemExit) as ex:
        main(["site", "adapt", str(folder), "--site", "ward-a"])
    assert ex.value.code == 0, capsys.readouterr().err
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(NAME, "site-ward-a")
    assert version.tags["site.adabn_class_mix"] == "training"
    assert version.tags["site.adabn_images"] == "36"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    with pytest.raises(SystemExit) as ex:
        main(["site", "adapt", str(folder), "--site", "ward-b", "--train-prevalence", "1"])
    assert ex.value.code == 2 and "--train-prevalence" in capsys.readouterr().err
