"""The label-free checks: the MMD permutation test and Saerens' EM prevalence."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.site.check import em_prevalence, mmd_test, prevalence_interval


def test_mmd_rarely_rejects_the_same_distribution_and_finds_a_shift() -> None:
    rng = np.random.default_rng(0)
    pvals = [mmd_test(rng.normal(size=(60, 5)), rng.normal(size=(60, 5)), 200, s)[1]
             for s in range(40)]
    assert np.mean(np.array(pvals) < 0.05) <= 0.15  # about 5 % false alarms
    a, b = rng.normal(size=(60, 5)), rng.normal(size=(60, 5)) + np.r_[0.8, 0, 0, 0, 0]
    stat, p = mmd_test(a, b, 500)
    assert p < 0.01 and stat > 0
    _, p_far = mmd_test(a, a + 3.0, 500)
    assert p_far == pytest.approx(1 / 501)  # no permutation beats it: the +1 smoothed floor


def test_em_recovers_a_changed_prevalence_from_calibrated_probabilities() -> None:
    rng = np.random.default_rng(1)
    # a calibrated model trained at prevalence 0.5: score s ~ N(+1, 1) for PNEUMONIA, N(-1, 1)
    # for NORMAL, P(PNEUMONIA | s) = sigmoid(2 s); the site has 80 % pneumonia
    y = rng.uniform(size=5000) < 0.8
    s = rng.normal(np.where(y, 1.0, -1.0), 1.0)
    prob = 1 / (1 + np.exp(-2 * s))
    assert prob.mean() < 0.75  # the naive average is biased toward 0.5
    assert em_prevalence(prob, 0.5) == pytest.approx(0.8, abs=0.02)
    est, lo, hi = prevalence_interval(prob[:800], 0.5, resamples=200)
    assert lo < 0.8 < hi and lo < est < hi


@pytest.mark.slow  # TensorFlow and a model: ~30 s on a busy 2-core machine
def test_check_command_flags_a_shifted_site_and_not_a_like_one(tmp_path, capsys) -> None:
    import json

    from pneumonia.cli import main
    from tests.inference.conftest import tiny_model
    from tests.site.conftest import write_pngs

    model = tmp_path / "model.keras"
    tiny_model(backbone="small_cnn").save(model)
    ref = tmp_path / "ref"
    files = write_pngs(ref / "images" / "val", 60, 100, 1)
    (ref / "split.csv").write_text(
        "image_id,path,label,patient_id,subset,source_image_id\n" + "".join(
            f"v{i},data/images/val/{f.name},{'NORMAL' if i % 2 else 'PNEUMONIA'},p{i},val,\n"
            for i, f in enumerate(files)), encoding="utf-8")
    like = write_pngs(tmp_path / "like", 40, 100, 2)[0].parent
    shifted = write_pngs(tmp_path / "shifted", 40, 200, 3)[0].parent
    verdicts = {}
    for name, folder in (("like", like), ("shifted", shifted)):
        out = tmp_path / f"{name}.json"
        with pytest.raises(SystemExit) as ex:
            main(["site", "check", str(folder), "--model", str(model), "--reference", str(ref),
                  "--permutations", "200", "--out", str(out)])
        assert ex.value.code == 0, capsys.readouterr().err
        verdicts[name] = json.loads(out.read_text())
    assert verdicts["shifted"]["shifted"] and verdicts["shifted"]["p_value"] < 0.01
    assert not verdicts["like"]["shifted"]
    assert "recalibrate before use" in verdicts["shifted"]["verdict"]
    lo, hi = verdicts["like"]["prevalence_ci"]
    assert 0 <= lo <= verdicts["like"]["prevalence"] <= hi <= 1
