"""An ensemble (`pneumonia ensemble`) calibrated for a site: registered as one version,
served by `pneumonia predict --site` as the mean of its members."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumonia.cli import main
from tests.inference.conftest import SIZE, tiny_model


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ex:
        main(argv)
    out = capsys.readouterr()
    return int(ex.value.code or 0), out.out, out.err


@pytest.mark.slow  # ~25 s: a store; the ensemble logged and loaded back as the site version
def test_an_ensemble_calibrated_for_a_site_is_registered_and_predicts_as_one_model(
        store: dict[str, str], labelled: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import keras
    import mlflow
    import pandas as pd

    from pneumonia.inference.sources import to_input
    from tests.site.conftest import NAME

    member_files = []
    for seed in (1, 2, 3):
        member_files.append(tmp_path / f"seed{seed}.keras")
        tiny_model(backbone="small_cnn", seed=seed).save(member_files[-1])
    out = tmp_path / "ens.keras"
    code, stdout, err = run(["ensemble", *map(str, member_files), "--out", str(out)], capsys)
    assert code == 0 and "the mean of 3 models" in stdout, err
    code, _, err = run(["ensemble", *map(str, member_files), "--out", str(out)], capsys)
    assert code == 2 and "exists; pass --replace" in err
    code, _, err = run(["site", "calibrate", str(labelled), "--site", "ens-site", "--model",
                        str(out), "--alpha", "0.2"], capsys)
    assert code == 0, err
    client = mlflow.MlflowClient()
    version = client.get_registered_model(NAME).aliases["site-ens-site"]
    assert str(version) == "2"
    csv = tmp_path / "pred.csv"
    code, _, err = run(["predict", "--site", "ens-site", str(labelled), "--out", str(csv)],
                       capsys)
    assert code == 0, err
    rows = pd.read_csv(csv).sort_values("path")
    x = np.stack([to_input(Path(p).read_bytes(), SIZE) for p in rows["path"]])
    expected = np.mean([np.asarray(keras.saving.load_model(p, compile=False).predict_on_batch(x)).reshape(-1)
                        for p in member_files], axis=0)
    np.testing.assert_allclose(rows["probability"].to_numpy(), expected, atol=2e-6)
    assert rows["calibration"].str.startswith("site-ens-site").all()
