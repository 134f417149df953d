"""The label-free checks: the MMD permutation test and Saerens' EM prevalence."""

from __future__ import annotations

from pathlib import Path

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
    from tests.site.conftest import write_pngs

    model, ref = _model_and_reference(tmp_path, 60, mixed=True)
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


def _clustered(patients: int, per_patient: int, rng: np.random.Generator, shift: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of `patients` patients, each with near-identical images (as a patient's
    follow-up X-rays are), and their patient ids."""
    centres = rng.normal(size=(patients, 5)) + shift
    x = np.repeat(centres, per_patient, axis=0) + 0.1 * rng.normal(size=(patients * per_patient, 5))
    return x, np.repeat(np.arange(patients), per_patient)


def test_patient_permutations_keep_the_level_that_image_permutations_lose() -> None:
    rng = np.random.default_rng(2)
    image_wise, grouped = [], []
    for seed in range(60):
        a, ga = _clustered(30, 4, rng)
        b, gb = _clustered(10, 4, rng)
        image_wise.append(mmd_test(a, b, 200, seed)[1])
        grouped.append(mmd_test(a, b, 200, seed, ga, gb)[1])
    # a patient's images moved one by one make a too-narrow null: false alarms galore
    assert np.mean(np.array(image_wise) < 0.05) > 0.5
    assert np.mean(np.array(grouped) < 0.05) <= 0.15  # whole patients moved: about 5 %
    a, ga = _clustered(30, 4, rng)
    b, gb = _clustered(30, 4, rng, shift=1.5)
    assert mmd_test(a, b, 200, 0, ga, gb)[1] < 0.01  # and a real shift is still found


def test_check_study_draws_keep_each_patients_images_on_one_side() -> None:
    from pneumonia.site.check_study import site_draw, split_reference

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(80), rng.integers(1, 6, 80)).astype(str)
    for _ in range(20):
        ref, held = split_reference(groups, rng)
        assert not set(groups[ref]) & set(groups[held])
        assert sorted([*ref, *held]) == list(range(len(groups)))
        assert abs(len(ref) - len(groups) // 2) <= 5
        for n in (10, 25):
            site = site_draw(groups, held, n, rng)
            assert set(site) <= set(held) and len(site) <= n
            for patient in set(groups[site]):  # every image of a drawn patient, or none
                assert set(np.flatnonzero(groups == patient)) <= set(site)
        assert list(site_draw(groups, held, None, rng)) == list(held)


def _sample(rng: np.random.Generator) -> object:
    from pneumonia.site.check_study import Sample

    val, vg = _clustered(60, 3, rng)
    test, tg = _clustered(40, 3, rng, shift=2.0)
    return Sample(val, vg.astype(str), test, tg.astype(str),
                  {"moved": val + np.r_[3.0, 0, 0, 0, 0], "same": val.copy()})


def test_check_study_counts_false_alarms_and_power_per_size() -> None:
    from pneumonia.site.check_study import (
        IGNORED,
        TEST,
        VALIDATION,
        run_repeats,
        smallest_n,
        summarize,
    )

    # 300 permutations: the aggregate over 5 bandwidths pays for its multiplicity in
    # resolution; with 100, p stays at 2-3 times the 1/101 floor and never reaches 0.01
    rows = run_repeats(_sample(np.random.default_rng(3)), [6, 30, None], repeats=6,
                       permutations=300, permutations_all=300, max_images=500, seed=0)
    summary = {(s["site"], s["images"]): s for s in summarize(rows)}
    assert summary[(VALIDATION, "all")]["draws"] == 6
    assert summary[("moved", 30)]["rate"] == 1.0  # a 3-sd move is found in 30 images
    assert summary[("same", 30)]["rate"] <= 1 / 6  # an identity "shift" is no shift
    assert summary[(TEST, "all")]["rate"] == 1.0
    assert summary[(VALIDATION, "all")]["rate"] <= 1 / 6
    # every image of a patient is a near copy: tested image by image, the held-out half differs
    assert summary[(IGNORED, "all")]["rate"] > summary[(VALIDATION, "all")]["rate"]
    assert ("moved", "all") not in summary  # shifts are measured at the sizes only
    lo, hi = summary[(VALIDATION, "all")]["ci"]
    assert lo <= summary[(VALIDATION, "all")]["rate"] <= hi and hi > 0
    assert smallest_n(summarize(rows), "moved") == 30 if summary[("moved", 6)]["rate"] < 0.8 \
        else smallest_n(summarize(rows), "moved") == 6
    assert smallest_n(summarize(rows), "same") is None


def test_site_patients_from_names_a_csv_or_none(tmp_path) -> None:
    from pneumonia.errors import PipelineError
    from pneumonia.site.check import site_patients

    ids, source = site_patients(["a/person3_bacteria_1.jpeg", "a/person3_virus_7.jpeg",
                                 "b.zip:IM-0011-0001.jpeg"], None)
    assert source == "file names" and ids[0] == ids[1] != ids[2]
    ids, source = site_patients(["scan1.png", "person3_bacteria_1.jpeg"], None)
    assert source == "none" and len(set(ids)) == 2
    table = tmp_path / "patients.csv"
    table.write_text("file,patient_id\nscan1.png,P1\nd/scan2.png,P1\n", encoding="utf-8")
    ids, source = site_patients(["x/scan1.png", "d/scan2.png"], str(table))
    assert list(ids) == ["P1", "P1"] and "--patients" in source
    with pytest.raises(PipelineError, match=r"1 image\(s\) not listed \(e.g. x/scan3.png\)"):
        site_patients(["x/scan1.png", "x/scan3.png"], str(table))


def test_check_refuses_an_empty_folder_and_too_few_images(tmp_path, capsys) -> None:
    from pneumonia.cli import main
    from tests.site.conftest import write_pngs

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image", encoding="utf-8")
    few = write_pngs(tmp_path / "few", 7, 100, 1)[0].parent
    for folder, expected in ((empty, "no images in this folder"),
                             (few, "7 readable image(s); site check needs at least 20")):
        with pytest.raises(SystemExit) as ex:
            main(["site", "check", str(folder), "--model", str(tmp_path / "none.keras")])
        assert ex.value.code == 2
        err = capsys.readouterr().err
        assert str(folder) in err and expected in err


@pytest.mark.slow  # TensorFlow and a model
def test_check_lists_unreadable_files_and_stops_when_too_few_remain(tmp_path, capsys) -> None:
    import json

    from pneumonia.cli import main
    from tests.site.conftest import write_pngs

    model, ref = _model_and_reference(tmp_path, 30, mixed=False)
    site = write_pngs(tmp_path / "site", 22, 100, 2)[0].parent
    (site / "broken.png").write_bytes(b"not a png")
    (site / "cut.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "check.json"
    args = ["--model", str(model), "--reference", str(ref), "--permutations", "50"]
    with pytest.raises(SystemExit) as ex:
        main(["site", "check", str(site), *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert ex.value.code == 1  # tested on the 22 readable images, and says which were not
    assert "2 file(s) could not be read" in err and "broken.png" in err and "cut.jpeg" in err
    doc = json.loads(out.read_text())
    assert doc["images"] == 22 and doc["skipped"] == 2 and len(doc["unreadable"]) == 2
    for f in sorted(site.glob("img00*.png"))[:5]:
        f.write_bytes(b"garbage")  # now only 17 readable: too few, and nothing tested
    out.unlink()
    with pytest.raises(SystemExit) as ex:
        main(["site", "check", str(site), *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and not out.exists()
    assert "17 readable image(s) (7 more could not be read" in err and "img000.png" in err
    assert "needs at least 20" in err


def test_committed_site_check_md_is_rendered_from_its_json() -> None:
    import json
    from pathlib import Path

    from pneumonia.site.check_study import markdown

    metrics = Path(__file__).resolve().parents[2] / "metrics"
    doc = json.loads((metrics / "site-check.json").read_text())
    assert markdown(doc) == (metrics / "site-check.md").read_text()
    draws = [d for d in doc["draws"] if d["site"] == "test" and d["images"] == "all"]
    assert len(draws) == doc["repeats_per_run"] * len(doc["runs"])
    s = next(s for s in doc["summary"] if s["site"] == "test" and s["images"] == "all")
    assert s["rejected"] == sum(d["p"] < 0.01 for d in draws)


def _model_and_reference(tmp_path: Path, n: int, mixed: bool) -> tuple[Path, Path]:
    """A tiny saved model and a reference folder of n validation originals (split.csv + PNGs),
    labels alternating when `mixed`, else all NORMAL."""
    from tests.inference.conftest import tiny_model
    from tests.site.conftest import write_pngs

    model = tmp_path / "model.keras"
    tiny_model(backbone="small_cnn").save(model)
    ref = tmp_path / "ref"
    files = write_pngs(ref / "images" / "val", n, 100, 1)
    rows = "".join(f"v{i},data/images/val/{f.name},"
                   f"{'NORMAL' if (i % 2 or not mixed) else 'PNEUMONIA'},p{i},val,\n"
                   for i, f in enumerate(files))
    (ref / "split.csv").write_text("image_id,path,label,patient_id,subset,source_image_id\n"
                                   + rows, encoding="utf-8")
    return model, ref


def _packed(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """b: a quarter of its points packed near the centre of a's distribution (a local change
    that a wide kernel averages away)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(120, 8)), rng.normal(size=(120, 8))
    b[:30] = 0.3 * rng.normal(size=(30, 8))
    return a, b


def test_aggregating_bandwidths_finds_a_local_change_the_median_bandwidth_misses() -> None:
    from pneumonia.site.check import SCALES

    agg, median = [], []
    for seed in range(12):
        a, b = _packed(seed)
        agg.append(mmd_test(a, b, 500, seed)[1])
        median.append(mmd_test(a, b, 500, seed, scales=(1.0,))[1])
    assert 1.0 in SCALES and min(SCALES) < 1.0
    assert np.mean(np.array(agg) < 0.01) >= 0.9
    assert np.mean(np.array(median) < 0.01) <= 0.8


def test_the_aggregate_p_lies_between_the_best_scale_and_its_bonferroni_bound() -> None:
    from pneumonia.site.check import mmd_pvalues

    scales = (0.25, 0.5, 1.0, 2.0)
    rng = np.random.default_rng(5)
    for seed in range(8):
        a = rng.normal(size=(50, 4))
        b = rng.normal(size=(40, 4)) + np.r_[0.3 * (seed % 3), 0, 0, 0]
        _, p, each = mmd_pvalues(a, b, 400, seed, None, None, scales)
        best = min(each.values())
        assert best - 1e-12 <= p <= min(1.0, len(scales) * best) + 1e-12, (p, each)
        # each scale's own p is that of the single-scale test on the same permutations
        for s in scales:
            assert mmd_pvalues(a, b, 400, seed, None, None, (s,))[1] == pytest.approx(each[s])
        # an aggregate restricted to one scale is that scale's test
        assert mmd_pvalues(a, b, 400, seed, None, None, scales, (0.5,))[1] == \
            pytest.approx(each[0.5])
