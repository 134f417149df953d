"""The served model: the registry's champion behind a real `mlflow models serve` answers the
same P(PNEUMONIA) as `pneumonia predict` for PNG, JPEG and DICOM (MONOCHROME2 16-bit and
MONOCHROME1) bytes, refuses a corrupt image, a decompression bomb, a hostile DICOM attribute,
too many rows and too many bytes with a 400 naming the problem (no stack trace), and keeps
serving."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pneumonia import cli
from tests.conftest import SAMPLE
from tests.inference.dicomkit import dicom16_of, dicom_bomb, gray_of, hostile_dicoms, png_bytes
from tests.inference.servekit import payload, post, served

MODEL = "models:/pneumonia-densenet201@champion"


@pytest.mark.slow  # ~30 s: a real model server (uvicorn + TensorFlow) starts
def test_served_champion_answers_like_predict(tmp_path: Path, champion_store: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    jpeg = min((SAMPLE / "test" / "PNEUMONIA").iterdir())
    gray = gray_of(min((SAMPLE / "test" / "NORMAL").iterdir()))
    files = {"a.jpeg": jpeg.read_bytes(), "b.png": png_bytes(gray),
             "c.dcm": dicom16_of(gray), "d.dcm": dicom16_of(gray, monochrome1=True)}
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store["uri"])
    out = tmp_path / "cli.csv"
    with pytest.raises(SystemExit) as exc:
        cli.main(["predict", str(folder), "--model", MODEL, "--out", str(out)])
    assert exc.value.code == 0, capsys.readouterr().err
    with open(out, newline="") as f:
        expected = {Path(r["path"]).name: r for r in csv.DictReader(f)}

    with served(MODEL, champion_store["uri"], tmp_path / "serve.log") as url:
        status, answer = post(url, payload(list(files.values())))
        assert status == 200, answer
        rows = answer["predictions"]
        got = np.array([r["probability"] for r in rows])
        want = np.array([float(expected[name]["probability"]) for name in files])
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert got[1] == got[2] == got[3]  # the PNG and both DICOMs hold the same image
        assert [r["label"] for r in rows] == [expected[n]["label"] for n in files]
        assert {r["threshold"] for r in rows} == {0.3}  # the champion's, as predict used

        data = files["a.jpeg"]
        status, answer = post(url, payload([files["b.png"], data[: len(data) // 2]]))
        assert status == 400, answer
        assert "row 1" in answer["message"] and "truncated" in answer["message"]
        status, answer = post(url, payload([b"just text"]))
        assert status == 400 and "not an image" in answer["message"]

        # Hostile input: each a 400 whose body names the row and the limit or the attribute.
        window, attribute = hostile_dicoms()["text_window_center"]
        tiny = png_bytes(gray[:8, :8])
        refusals = [
            (payload([files["b.png"], dicom_bomb(8192, 8192)]),
             ["row 1: image too large", "8192 x 8192 = 67.1 megapixels",
              "over the limit of 50 megapixels (data.max_megapixels)"]),
            (payload([window]), ["row 0: DICOM attribute", attribute]),
            (payload([tiny] * 65), ["too many images: 65 rows", "at most 64", "`max_rows`"]),
            (payload([os.urandom(1_500_000)]),
             ["request too large: the images total 1.5 MB", "`max_request_mb`"]),
            # A misspelt param: MLflow alone dropped it and answered at the logged threshold.
            (payload([files["b.png"]], thresh=0.1), ["unknown request param(s) thresh"]),
        ]
        for body, texts in refusals:
            status, answer = post(url, body)
            assert status == 400, answer
            assert all(t in answer["message"] for t in texts), answer["message"][-600:]
            assert "stack_trace" not in answer and "Traceback" not in json.dumps(answer)

        status, answer = post(url, payload([files["a.jpeg"]], threshold=0.99))
        assert status == 200  # still serving after the bad requests
        assert answer["predictions"][0]["probability"] == pytest.approx(got[0], abs=1e-5)
        assert answer["predictions"][0]["threshold"] == 0.99
