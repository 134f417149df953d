"""params.yaml is validated once, at the edge: wrong keys, types and ranges name the key."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pneumonia.params import ParamsError, flatten, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = yaml.safe_load((ROOT / "params.yaml").read_text())


def _with(dotted: str, value: object) -> dict:
    raw = copy.deepcopy(COMMITTED)
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return raw


def test_committed_params_are_the_paper_configuration() -> None:
    p = parse_params(COMMITTED)
    assert p.lr == pytest.approx(2e-6)
    assert p.data.image_size == 224
    assert p.balance.target_normal == 3849
    assert p.split.val_fraction == pytest.approx(0.2)
    assert (p.model.backbone, p.model.weights, p.model.trainable_layers) == ("densenet201", "imagenet", 30)
    assert p.train.reduce_lr_patience == 2 and p.train.early_stopping_patience == 5
    assert p.evaluate.threshold == pytest.approx(0.5)
    assert p.evaluate.threshold_rule == "fixed" and p.evaluate.bootstrap_resamples >= 2000
    # The paper's order and ImageDataGenerator's augmentation semantics; no op determinism.
    assert p.split.generated_in_val is True and p.train.deterministic is False
    assert (p.train.augment.brightness_mode, p.train.augment.zoom_independent) == (
        "multiplicative", True)
    # `lr` must be top level so `dvc exp run -S lr=...` works (DVC only overrides existing keys).
    assert "lr" in COMMITTED


def test_lr_string_written_back_by_dvc_is_a_float(tmp_path: Path) -> None:
    # `dvc exp run -S lr=2e-6` writes `lr: 2e-06`, which YAML 1.1 reads as the string '2e-06'.
    text = (ROOT / "params.yaml").read_text().replace("lr: 2.0e-6", "lr: 2e-06")
    (tmp_path / "params.yaml").write_text(text)
    assert yaml.safe_load(text)["lr"] == "2e-06"  # the trap is real
    p = load_params(tmp_path / "params.yaml")
    assert isinstance(p.lr, float) and p.lr == pytest.approx(2e-6)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("lr", -0.001, "`lr`"),
        ("lr", "fast", "`lr`"),
        ("split.val_fraction", 1.5, "`split.val_fraction`"),
        ("model.backbone", "vgg16", "`model.backbone`"),
        ("data.image_size", 0, "`data.image_size`"),
        ("data.image_size", "big", "`data.image_size`"),
        ("train.epochs", 2.5, "`train.epochs`"),
        ("ingest.on_bad_file", "ignore", "`ingest.on_bad_file`"),
        ("evaluate.threshold", 1.0, "`evaluate.threshold`"),
        ("evaluate.bootstrap_resamples", 199, "`evaluate.bootstrap_resamples`"),
        ("evaluate.threshold_rule", "tuned-on-test", "`evaluate.threshold_rule`"),
        ("train.augment.rotation", 90, "`train.augment.rotation`"),
        ("model.weights", "/nonexistent/weights.h5", "`model.weights`"),
        ("train.augment.brightness_mode", "gamma", "`train.augment.brightness_mode`"),
        ("train.augment.zoom_independent", "maybe", "`train.augment.zoom_independent`"),
        ("train.deterministic", 2, "`train.deterministic`"),
        ("split.generated_in_val", "sometimes", "`split.generated_in_val`"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, fragment: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_params(_with(key, value))
    assert fragment in str(err.value)
    assert "params.yaml" in str(err.value)


def test_unknown_key_is_refused_with_the_known_ones() -> None:
    raw = copy.deepcopy(COMMITTED)
    raw["train"]["epoch"] = 3  # typo of `epochs`
    with pytest.raises(ParamsError, match=r"`train\.epoch`.*Known keys: .*train\.epochs"):
        parse_params(raw)


def test_missing_required_key() -> None:
    raw = copy.deepcopy(COMMITTED)
    del raw["lr"]
    with pytest.raises(ParamsError, match="required key `lr` is missing"):
        parse_params(raw)


def test_yaml_spellings_are_accepted() -> None:
    p = parse_params(_with("model.weights", "none"))
    assert p.model.weights == "none"
    assert parse_params(_with("train.jit_compile", "true")).train.jit_compile is True
    assert parse_params(_with("train.mixed_precision", False)).train.mixed_precision == "off"


def test_flatten_gives_dotted_keys() -> None:
    flat = flatten(parse_params(COMMITTED))
    assert flat["lr"] == pytest.approx(2e-6)
    assert flat["train.augment.rotation"] == 10
    assert flat["model.backbone"] == "densenet201"


def test_cli_reports_bad_params_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with("split.val_fraction", 1.5)))
    proc = subprocess.run(
        [sys.executable, "-m", "pneumonia", "params"], cwd=tmp_path, capture_output=True, check=False,
        text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "`split.val_fraction` is 1.5" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_train_stage_params_digest_covers_what_dvc_yaml_lists() -> None:
    from pneumonia.params import TRAIN_STAGE_PARAMS, params_digest

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    assert set(stage["params"]) == set(TRAIN_STAGE_PARAMS)
    digest = params_digest(parse_params(copy.deepcopy(COMMITTED)))
    # A train param changes the digest (evaluate then refuses); an evaluate param does not.
    assert params_digest(parse_params(_with("train.seed", 32))) != digest
    assert params_digest(parse_params(_with("evaluate.threshold", 0.3))) == digest


def test_evaluate_refuses_params_changed_since_training() -> None:
    from pneumonia.errors import PipelineError
    from pneumonia.params import params_digest
    from pneumonia.pipeline_run import check_params_unchanged

    read = params_digest(parse_params(_with("train.seed", 31)))
    now = params_digest(parse_params(_with("train.seed", 32)))
    check_params_unchanged({"params_sha256": read}, read)
    check_params_unchanged({}, now)  # a run file from older code: nothing to compare
    with pytest.raises(PipelineError, match=r"params.yaml changed after the train stage read "
                                            r"it.*--queue.*--temp"):
        check_params_unchanged({"params_sha256": read}, now)
