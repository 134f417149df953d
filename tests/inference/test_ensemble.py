"""`pneumonia ensemble`: several models averaged into one .keras model, and everything that takes
a model taking it — predict, Grad-CAM, AdaBN, site check, site calibrate (registered, served by
`predict --site`). Small real models (build_model with small_cnn, random weights); no mocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pneumonia.errors import PipelineError
from pneumonia.files import sha256_file
from tests.inference.conftest import SIZE, tiny_model


@pytest.fixture(scope="module")
def member_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("members")
    out = []
    for seed in (1, 2, 3):
        path = folder / f"seed{seed}.keras"
        tiny_model(backbone="small_cnn", seed=seed).save(path)
        out.append(path)
    return out


def images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 1)).astype("float32")


def load(path: Path):
    import keras

    return keras.saving.load_model(path, compile=False)


def test_the_ensemble_is_the_mean_of_its_members_in_one_file(
        member_files: list[Path], tmp_path: Path) -> None:
    from pneumonia.inference import ensemble

    out = tmp_path / "ens.keras"
    record = ensemble.save([str(p) for p in member_files], out)
    x = images()
    members = [np.asarray(load(p).predict_on_batch(x)) for p in member_files]
    mean = np.mean(members, axis=0)
    assert np.ptp(np.array(members)[:, :, 0], axis=0).max() > 0.05  # the members disagree
    ens = load(out)
    assert ensemble.is_ensemble(ens) and len(ensemble.members_of(ens)) == 3
    np.testing.assert_allclose(np.asarray(ens.predict_on_batch(x)), mean, atol=1e-6)
    written = json.loads(out.with_suffix(".json").read_text())
    assert written == record
    assert [m["sha256"] for m in record["members"]] == [sha256_file(p)
                                                        for p in member_files]
    assert record["sha256"] == sha256_file(out) and record["outputs"] == 1
    assert not ensemble.is_ensemble(load(member_files[0]))


def test_bad_members_and_outputs_are_refused_by_name(
        member_files: list[Path], tmp_path: Path) -> None:
    from pneumonia.inference import ensemble

    a, b, _ = (str(p) for p in member_files)
    other_size = tmp_path / "s48.keras"
    tiny_model(backbone="small_cnn", size=48, seed=4).save(other_size)
    cases = [
        ([a], tmp_path / "e1.keras", "at least 2 models"),
        ([a, a], tmp_path / "e2.keras", "are the same model"),
        ([a, str(tmp_path / "missing.keras")], tmp_path / "e3.keras", "missing.keras: no such"),
        ([a, str(other_size)], tmp_path / "e4.keras", "same image size"),
        ([a, b], tmp_path / "e5.h5", "ending in .keras"),
    ]
    for specs, out, message in cases:
        with pytest.raises(PipelineError, match=message):
            ensemble.save(specs, out)
        assert not out.exists()
    out = tmp_path / "ens.keras"
    out.write_bytes(b"the user's file")
    with pytest.raises(PipelineError, match="exists; pass --replace"):
        ensemble.save([a, b], out)
    assert out.read_bytes() == b"the user's file"  # nothing overwritten unasked
    out.unlink()
    out.with_suffix(".json").write_text("{}")
    with pytest.raises(PipelineError, match=r"ens.json exists"):
        ensemble.save([a, b], out)
    assert not out.exists()
    ensemble.save([a, b], out, replace=True)
    with pytest.raises(PipelineError, match="already an ensemble"):
        ensemble.save([str(out), a], tmp_path / "nested.keras")
    with pytest.raises(PipelineError, match="is one of the members"):
        ensemble.save([a, b], Path(a), replace=True)


def test_adabn_grad_cam_and_site_check_see_every_member(
        member_files: list[Path], tmp_path: Path) -> None:
    """AdaBN re-estimates each member's BatchNorm layers; Grad-CAM averages the members'
    heatmaps; site check's embedding is the members' features side by side."""
    from pneumonia.inference import ensemble
    from pneumonia.inference.gradcam import CamModel
    from pneumonia.site import adapt, check

    out = tmp_path / "ens.keras"
    ensemble.save([str(p) for p in member_files], out)
    ens, members = load(out), [load(p) for p in member_files]
    x = images(40, seed=5)

    per_member = [len(adapt.batchnorm_layers(m)) for m in members]
    assert per_member[0] > 0 and len(adapt.batchnorm_layers(ens)) == sum(per_member)
    before = [layer.moving_mean.numpy().copy() for layer in adapt.batchnorm_layers(ens)]
    assert adapt.adapt_batchnorm(ens, x) == sum(per_member)
    after = [layer.moving_mean.numpy() for layer in adapt.batchnorm_layers(ens)]
    changed = [not np.allclose(b, a) for b, a in zip(before, after, strict=True)]
    size = per_member[0]
    assert all(any(changed[i * size:(i + 1) * size]) for i in range(3))  # every member adapted

    ens = load(out)  # unadapted again
    cams, probs = ensemble.cam_model(ens)(x[:4])
    member_cams = [CamModel(m)(x[:4]) for m in members]
    mean = np.mean([c for c, _ in member_cams], axis=0)
    peaks = mean.reshape(4, -1).max(axis=1)
    assert (peaks > 0).all()  # the members' heatmaps differ: the mean is not any one of them
    assert not any(np.allclose(c, member_cams[0][0]) for c, _ in member_cams[1:])
    mean /= peaks.reshape(-1, 1, 1)
    np.testing.assert_allclose(cams, mean, atol=1e-5)
    np.testing.assert_allclose(probs, np.asarray(ens.predict_on_batch(x[:4])).reshape(-1),
                               atol=1e-5)
    assert cams.shape == (4, SIZE, SIZE) and np.allclose(cams.reshape(4, -1).max(axis=1), 1)

    features = check.embed(ens, x[:5])
    parts = [check.embed(m, x[:5]) for m in members]
    np.testing.assert_allclose(features, np.concatenate(parts, axis=1), rtol=1e-5, atol=1e-5)
