"""`pneumonia predict`: real files, folders, zips and DICOM through the real command (in-process
`pneumonia.cli.main`), checked against the model applied directly to ingest's decoding."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pneumonia import cli
from tests.conftest import SAMPLE, zeros_png
from tests.inference import dicomkit
from tests.inference.conftest import reference_probs
from tests.synthkit import brightness_model

NORMAL = sorted((SAMPLE / "test" / "NORMAL").iterdir())
PNEUMONIA = sorted((SAMPLE / "test" / "PNEUMONIA").iterdir())


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(["predict", *argv])
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def no_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder without MLflow store, as the current directory."""
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return project


def test_files_folders_zip_and_dicom_match_the_model(tmp_path: Path, model_file: Path,
                                                     keras_model, no_store: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(NORMAL[0], folder / "a.jpeg")
    gray = dicomkit.gray_of(PNEUMONIA[0])
    (folder / "sub" / "b.png").write_bytes(dicomkit.png_bytes(gray))
    (folder / "sub" / "c.dcm").write_bytes(dicomkit.dicom16_of(gray, monochrome1=True))
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(PNEUMONIA[1], "x/p.jpeg")
    out = tmp_path / "out.csv"
    code, _, err = run([str(folder), str(archive), str(NORMAL[1]), "--model", str(model_file),
                        "--out", str(out), "--threshold", "0.4"], capsys)
    assert code == 0, err
    rows = read_csv(out)
    assert [Path(r["path"].split(":")[-1]).name for r in rows] == [
        "a.jpeg", "b.png", "c.dcm", "p.jpeg", NORMAL[1].name]
    ref = reference_probs(keras_model, [NORMAL[0], PNEUMONIA[0], PNEUMONIA[0], PNEUMONIA[1],
                                        NORMAL[1]])
    got = np.array([float(r["probability"]) for r in rows])
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert got[1] == got[2]  # the DICOM (16-bit MONOCHROME1) is the PNG's image
    assert np.ptp(got) > 0.01  # the check above compares different numbers, not one constant
    assert all(r["threshold"] == "0.4" and not r["error"] for r in rows)
    assert [r["label"] for r in rows] == ["PNEUMONIA" if p >= 0.4 else "NORMAL" for p in got]


def test_bad_files_are_listed_skipped_and_exit_1(tmp_path: Path, model_file: Path,
                                                 no_store: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(NORMAL[0], folder / "good.jpeg")
    data = NORMAL[1].read_bytes()
    (folder / "truncated.jpeg").write_bytes(data[: len(data) // 2])
    (folder / "text.png").write_text("hello, I am text")
    (folder / "nopixels.dcm").write_bytes(dicomkit.dicom_bytes(None))
    out = tmp_path / "out.json"
    code, _, err = run([str(folder), "--model", str(model_file), "--out", str(out)], capsys)
    assert code == 1
    assert "Traceback" not in err
    doc = json.loads(out.read_text())
    by_name = {Path(p["path"]).name: p for p in doc["predictions"]}
    assert by_name["good.jpeg"]["probability"] is not None and by_name["good.jpeg"]["error"] is None
    reasons = {"truncated.jpeg": "truncated", "text.png": "not an image",
               "nopixels.dcm": "no pixel data"}
    for name, reason in reasons.items():
        assert by_name[name]["probability"] is None
        assert reason in by_name[name]["error"]
        assert f"{folder / name}: " in err and reason in err  # listed on stderr with the reason
    assert "3 file(s) skipped" in err


@pytest.mark.parametrize("args, message", [
    (["{empty}"], "no images in this folder"),
    (["{image}", "--model", "{missing}"], "no such file"),
    (["{image}", "--model", "models:/pneumonia-densenet201@nope"], "does not exist"),
    (["{image}", "--out", "x.txt"], "give a .csv or .json"),
    (["{image}", "--threshold", "1.5"], "strictly between 0 and 1"),
    (["{image}"], "no model to use"),
])
def test_usage_errors_exit_2_with_one_message(tmp_path: Path, no_store: Path, args: list[str],
                                              message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    fill = {"empty": tmp_path / "empty", "image": NORMAL[0], "missing": tmp_path / "no.keras"}
    code, _, err = run([a.format(**fill) for a in args], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.strip().startswith("ERROR [predict]")


def test_unknown_alias_names_the_aliases_there_are(champion_store: dict[str, str],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store["uri"])
    code, _, err = run([str(NORMAL[0]), "--model", "models:/pneumonia-densenet201@best"], capsys)
    assert code == 2
    assert "unknown alias 'best'" in err and "has aliases champion" in err


def test_default_model_is_the_registry_champion_with_its_threshold(
        champion_store: dict[str, str], keras_model, no_store: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store["uri"])
    code, out, err = run([str(NORMAL[0]), str(PNEUMONIA[0])], capsys)  # CSV on stdout
    assert code == 0, err
    assert "models:/pneumonia-densenet201@champion" in err
    assert "WARNING" not in err  # no provenance recorded: nothing claims it is a demo model
    rows = list(csv.DictReader(out.splitlines()))
    assert [r["threshold"] for r in rows] == ["0.3", "0.3"]
    np.testing.assert_allclose([float(r["probability"]) for r in rows],
                               reference_probs(keras_model, [NORMAL[0], PNEUMONIA[0]]), atol=1e-6)
    # the same model through a runs:/ URI (the model logged in that run)
    code, out, err = run([str(NORMAL[0]), "--model", f"runs:/{champion_store['run_id']}/model"],
                         capsys)
    assert code == 0, err
    # a champion promoted by hand (pneumonia promote's tags) is announced as such
    assert "promoted to champion by hand" not in err
    import mlflow

    client = mlflow.MlflowClient(champion_store["uri"])
    tags = {"promote.by": "alice", "promote.reason": "new site", "promote.at": "2026-12-06",
            "promote.gate_said": "challenger: not comparable"}
    for key, value in tags.items():
        client.set_model_version_tag("pneumonia-densenet201", "1", key, value)
    try:
        code, _, err = run([str(NORMAL[0])], capsys)
        assert code == 0, err
        assert "NOTE: this champion was promoted to champion by hand by alice" in err
        assert "new site" in err
    finally:
        for key in tags:
            client.delete_model_version_tag("pneumonia-densenet201", "1", key)


def test_without_a_store_the_workspace_model_and_evaluates_threshold(
        no_store: Path, model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (no_store / "models").mkdir()
    shutil.copy(model_file, no_store / "models" / "model.keras")
    (no_store / "metrics").mkdir()
    (no_store / "metrics" / "evaluate.json").write_text(json.dumps({"threshold": 0.35}))
    code, out, err = run([str(NORMAL[0])], capsys)
    assert code == 0, err
    assert "models/model.keras" in err and "0.35" in err
    assert next(iter(csv.DictReader(out.splitlines())))["threshold"] == "0.35"
    assert not (no_store / "mlflow.db").exists()  # looking for a champion created no store


def test_threshold_chosen_is_the_validation_chosen_one_of_evaluate_json(
        no_store: Path, model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--threshold chosen` applies evaluate's `threshold_chosen` (youden, on validation images),
    not `threshold`; with rule `fixed` there is none and the command says so (exit 2)."""
    (no_store / "models").mkdir()
    shutil.copy(model_file, no_store / "models" / "model.keras")
    (no_store / "metrics" / "details").mkdir(parents=True)
    (no_store / "metrics" / "evaluate.json").write_text(json.dumps({"threshold": 0.5}))
    evaluate_json = no_store / "metrics" / "details" / "evaluate.json"  # the complete record
    evaluate_json.write_text(json.dumps(
        {"threshold": 0.5, "threshold_rule": "youden", "threshold_chosen": 0.4213}))
    code, out, err = run([str(NORMAL[0]), "--threshold", "chosen"], capsys)
    assert code == 0, err
    assert "threshold 0.4213 (metrics/details/evaluate.json threshold_chosen" in err
    assert next(iter(csv.DictReader(out.splitlines())))["threshold"] == "0.4213"
    code, out, _ = run([str(NORMAL[0])], capsys)  # the default stays evaluate's `threshold`
    assert code == 0 and next(iter(csv.DictReader(out.splitlines())))["threshold"] == "0.5"

    evaluate_json.write_text(json.dumps(
        {"threshold": 0.5, "threshold_rule": "fixed", "threshold_chosen": 0.5}))
    code, _, err = run([str(NORMAL[0]), "--threshold", "chosen"], capsys)
    assert code == 2 and "threshold_rule fixed" in err and "youden" in err
    code, _, err = run([str(NORMAL[0]), "--model", str(model_file), "--threshold", "chosen"],
                       capsys)
    assert code == 2 and "nothing records a threshold chosen" in err
    code, _, err = run([str(NORMAL[0]), "--threshold", "best"], capsys)
    assert code == 2 and "neither a number nor `chosen`" in err


def test_threshold_chosen_of_a_registered_model_comes_from_its_evaluate_run(
        champion_store: dict[str, str], no_store: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store["uri"])
    mlflow.set_tracking_uri(champion_store["uri"])
    client = mlflow.MlflowClient()
    name, run_id = "pneumonia-densenet201", champion_store["run_id"]
    champion = client.get_model_version_by_alias(name, "champion")
    if "evaluate_run_id" not in (champion.tags or {}):  # as evaluate's gate records it
        code, _, err = run([str(NORMAL[0]), "--threshold", "chosen"], capsys)
        assert code == 2 and "no evaluate run recorded" in err
        client.set_model_version_tag(name, champion.version, "evaluate_run_id", run_id)
    run_data = client.get_run(run_id).data
    if "evaluate.threshold_rule" not in run_data.params:  # what evaluate logs with youden
        client.log_param(run_id, "evaluate.threshold_rule", "youden")
        client.log_metric(run_id, "threshold_chosen", 0.37)
    for model in ([], ["--model", f"runs:/{run_id}/model"]):
        code, out, err = run([str(NORMAL[0]), *model, "--threshold", "chosen"], capsys)
        assert code == 0, err
        assert "threshold_chosen (youden, validation)" in err
        assert next(iter(csv.DictReader(out.splitlines())))["threshold"] == "0.37"
    mlflow.set_tracking_uri("")


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 = every image predicted" in text and "1 = some files" in text and "2 = usage" in text


@pytest.fixture
def half_model(tmp_path: Path) -> Path:
    """A .keras model answering exactly 0.5 for every image (loads in a fraction of the
    DenseNet's time: for the tests of what is refused before the model runs)."""
    path = tmp_path / "half.keras"
    brightness_model(32, constant=0.5).save(path)
    return path


def test_bombs_and_hostile_dicoms_are_listed_with_the_limit_or_the_attribute(
        tmp_path: Path, half_model: Path, no_store: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's files: a 131 kB deflated DICOM of 8192^2 pixels (predict peaked at 2.8 GB
    and predicted it) and a 16-bit PNG under Pillow's limit; DICOM display attributes pydicom
    cannot use ("unexpected TypeError" before). Each is one line naming the file and the limit
    or the attribute; the good image is still predicted."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(NORMAL[0], folder / "good.jpeg")
    (folder / "bomb.dcm").write_bytes(dicomkit.dicom_bomb(8192, 8192))
    (folder / "bomb16.png").write_bytes(zeros_png(8000, 8000, bit_depth=16))
    hostile = dicomkit.hostile_dicoms()
    expected = {"bomb.dcm": "8192 x 8192 = 67.1 megapixels, over the limit of 50 megapixels "
                            "(data.max_megapixels)",
                "bomb16.png": "8000 x 8000 = 64.0 megapixels, over the limit of 50 megapixels"}
    for name in ("text_window_center", "voi_lut_without_descriptor", "zero_window_width"):
        data, attribute = hostile[name]
        (folder / f"{name}.dcm").write_bytes(data)
        expected[f"{name}.dcm"] = attribute
    code, out, err = run([str(folder), "--model", str(half_model)], capsys)
    assert code == 1
    assert "Traceback" not in err and "unexpected" not in err
    for name, text in expected.items():
        (line,) = [li for li in err.splitlines() if li.strip().startswith(f"{folder / name}: ")]
        assert text in line, line
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.splitlines())}
    assert rows["good.jpeg"]["probability"] and not rows["good.jpeg"]["error"]
    assert f"{len(expected)} file(s) skipped" in err


def test_the_pixel_cap_is_params_yaml_data_max_megapixels(
        tmp_path: Path, half_model: Path, no_store: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    (no_store / "params.yaml").write_text(
        "lr: 0.001\ndata:\n  raw: data/raw\n  max_megapixels: 0.001\n")
    image = tmp_path / "small.png"
    image.write_bytes(dicomkit.png_bytes(np.full((40, 40), 100, np.uint8)))  # 1600 pixels
    code, _, err = run([str(image), "--model", str(half_model)], capsys)
    assert code == 1
    assert "at most 0.001 megapixels each (params.yaml data.max_megapixels)" in err
    assert f"{image}: image too large: the PNG header says 40 x 40" in err
    assert "over the limit of 0.001 megapixels" in err


def test_a_probability_equal_to_the_threshold_is_pneumonia(
        half_model: Path, no_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model answering exactly 0.5: PNEUMONIA at --threshold 0.5 (P >= threshold), NORMAL
    just above it."""
    labels = {}
    for threshold in ("0.5", "0.5000001"):
        code, out, err = run([str(NORMAL[0]), "--model", str(half_model), "--threshold",
                              threshold], capsys)
        assert code == 0, err
        (row,) = csv.DictReader(out.splitlines())
        assert float(row["probability"]) == 0.5
        labels[threshold] = row["label"]
    assert labels == {"0.5": "PNEUMONIA", "0.5000001": "NORMAL"}


def test_tta_averages_the_models_outputs_over_the_views(tmp_path: Path, model_file: Path,
                                                        keras_model, no_store: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`predict --tta`: each probability is the mean over pneumonia.inference.tta's views of
    the decoded image (not the plain output), and the JSON says TTA was used."""
    from pneumonia.inference import tta
    from pneumonia.inference.sources import to_input

    files = [NORMAL[0], PNEUMONIA[0], PNEUMONIA[1]]
    out = tmp_path / "out.json"
    code, _, err = run([*map(str, files), "--model", str(model_file), "--out", str(out),
                        "--tta"], capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    got = np.array([float(r["probability"]) for r in doc["predictions"]])
    x = np.stack([to_input(f.read_bytes(), int(keras_model.input_shape[1])) for f in files])
    np.testing.assert_allclose(got, tta.outputs(keras_model, x).reshape(-1), atol=1e-6)
    assert not np.allclose(got, reference_probs(keras_model, files), atol=1e-6)
    assert doc["tta"] is True
