"""End to end: the six stages through real DVC on the bundled real sample, tracked in real MLflow.

A module-scoped fixture copies the project into a fresh git repository, sets a tiny configuration
(32-px images, random init, 2 epochs) and runs `dvc repro` once (~1-2 min on 2 cores); the tests
then check its outputs, the MLflow store, DVC's caching and the determinism of the data stages.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "data.raw": "data/sample/chest_xray",
    "data.image_size": 32,
    "validate.table1_counts": False,
    "balance.target_normal": 130,
    # The small plain CNN: these tests are about DVC and MLflow, not the network, and building
    # a DenseNet's graph is most of a stage's time at 32 px (tests/model covers the DenseNets).
    "model.backbone": "small_cnn",
    "model.weights": "none",
    "model.dense_units": 16,
    "lr": 1e-4,
    "train.epochs": 2,
    "train.batch_size": 32,
    "evaluate.batch_size": 64,
}
DATA_STAGES = ("ingest", "balance", "split")


def set_params(repo: Path, overrides: dict[str, object]) -> None:
    """Write dotted-key overrides (`train.epochs`) into repo/params.yaml."""
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


def make_project(dest: Path, overrides: dict[str, object]) -> Path:
    """Copy the project's files (as a clone would have them) into `dest`, a fresh git repo."""
    files = git(ROOT, "ls-files", "-co", "--exclude-standard").splitlines()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    set_params(dest, overrides)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny config")
    return dest


def lock_out_hashes(repo: Path, stages: tuple[str, ...]) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {
        f"{stage}:{out['path']}": out["md5"] for stage in stages for out in lock[stage]["outs"]
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_project(tmp_path_factory.mktemp("pipeline"), TINY)
    proc = dvc(repo, "repro")
    (repo / "repro.log").write_text(proc.stdout + proc.stderr)
    # Commit the results, as a user would before reviewing changes with `dvc metrics diff`.
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline results")
    return repo


def test_repro_runs_all_six_stages(project: Path) -> None:
    log = (project / "repro.log").read_text()
    for stage in ("ingest", "validate", "balance", "split", "train", "evaluate"):
        assert f"Running stage '{stage}'" in log


def test_outputs_and_metrics(project: Path) -> None:
    manifest = pd.read_csv(project / "data/manifest.csv")
    assert len(manifest) == 284  # every image of the bundled sample
    split = pd.read_csv(project / "data/split.csv", keep_default_na=False)
    assert set(split["subset"]) == {"train", "val", "test"}
    assert (split["subset"] == "test").sum() == 100
    # split.csv fingerprints every image it lists (train/evaluate depend on it, not the folders).
    for row in split.itertuples():
        assert hashlib.sha256((project / row.path).read_bytes()).hexdigest() == row.png_sha256

    ev = json.loads((project / "metrics/details/evaluate.json").read_text())  # every key
    assert ev["accuracy_ci_low"] <= ev["accuracy"] <= ev["accuracy_ci_high"]
    assert ev["NORMAL_support"] == 40 and ev["PNEUMONIA_support"] == 60
    for label in ("NORMAL", "PNEUMONIA"):
        assert 0.0 <= ev[f"{label}_recall"] <= 1.0  # both classes are in the test set
        for key in ("precision", "f1"):
            # null when undefined: a 2-epoch model from random init may never predict a class
            value, low = ev[f"{label}_{key}"], ev[f"{label}_{key}_ci_low"]
            if value is not None and low is None:  # withheld: too many undefined resamples
                assert ev[f"{label}_{key}_ci_undefined_share"] > 0.1
            assert value is None or low is None or low <= value <= 1.0
    # the leak-free subset is measured from data/manifest.csv (a dep of evaluate)
    assert 0 <= ev["leakfree_n_test"] <= 100 and "leakfree_accuracy" in ev
    for plot in ("metrics/reliability.csv", "metrics/pr.csv"):
        assert plot in git(project, "ls-files", "metrics")

    predictions = pd.read_csv(project / "metrics/predictions.csv")
    assert len(predictions) == 100
    assert set(predictions.columns) >= {"actual", "predicted", "probability", "patient_id"}
    # kept in git (a plot with cache: false): another revision can read it without a remote
    assert "metrics/predictions.csv" in git(project, "ls-files", "metrics")
    table3 = json.loads((project / "metrics/table3.json").read_text())
    # The paper's accuracy sits beside this run's (the one in evaluate.json).
    assert table3["cells"]["accuracy"]["paper"] == 0.96
    assert table3["cells"]["accuracy"]["run"] == pytest.approx(ev["accuracy"])
    history = pd.read_csv(project / "metrics/train_history.csv")
    assert len(history) == json.loads((project / "metrics/train.json").read_text())["epochs_run"]


def _leaves(doc: object, prefix: str = "") -> dict[str, object]:
    """Every value DVC would show of a JSON document: dotted key -> scalar (lists: not shown)."""
    if isinstance(doc, dict):
        return {k: v for key, value in doc.items() for k, v in _leaves(value, f"{prefix}{key}.")
                .items()}
    return {} if isinstance(doc, list) else {prefix[:-1]: doc}


# Where each metrics file of the pipeline before the headline split went (issue 36): its
# complete record, by path. table3.json, registry.json and balance.json kept their paths.
MOVED = {f"metrics/{name}": f"metrics/details/{name}"
         for name in ("evaluate.json", "validation.json", "split.json", "train.json")}
KEPT = ("metrics/table3.json", "metrics/registry.json", "metrics/balance.json")


def test_dvc_shows_the_headline_and_nothing_is_lost(project: Path) -> None:
    from pneumonia.evaluation.mlflow_names import SETTINGS, VALIDATION
    from pneumonia.evaluation.paper import metric_name
    from pneumonia.files import headline
    from pneumonia.paths import HEADLINE

    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    shown = {path: entry["data"] for path, entry in shown[""]["data"].items()}
    # What a person reads: about 40 values in all, evaluate's first (dvc.yaml's stage order).
    assert 25 <= sum(len(_leaves(doc)) for doc in shown.values()) <= 42, shown
    assert next(iter(shown)) == "metrics/evaluate.json"
    assert list(shown["metrics/evaluate.json"])[:3] == ["accuracy", "accuracy_ci_low",
                                                        "accuracy_ci_high"]
    for gone in ("metrics/table3.json", "metrics/registry.json"):
        assert gone not in shown
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    outs = {o["path"]: o for stage in lock.values() for o in stage.get("outs", [])}
    tracked = git(project, "ls-files", "metrics").split()
    for path, details in MOVED.items():
        full = json.loads((project / details).read_text())
        # the headline is the record's own values (DVC leaves out a null: an undefined metric)
        expected = _leaves(headline(full, HEADLINE[Path(path).name]))
        assert _leaves(shown[path]) == {k: v for k, v in expected.items() if v is not None}
        assert _leaves(shown[path]).items() <= _leaves(full).items()
        assert details in outs  # restored from DVC's run cache with the stage
        # in git, readable from any revision, except validate's (a cached out: in DVC's cache)
        assert (details in tracked) == (path != "metrics/validation.json"), details
    for path in KEPT:
        assert path in outs and path in tracked and _leaves(json.loads((project / path)
                                                                        .read_text()))
    # evaluate's complete record: every old key family is still written...
    full = json.loads((project / MOVED["metrics/evaluate.json"]).read_text())
    for key in ("accuracy", "leakfree_accuracy", "leakfree_alt_accuracy", "chosen_accuracy",
                "roc_auc_ci_low", "brier", "ece", "conformal_qhat", "threshold_chosen",
                "PNEUMONIA_recall_bacteria", "NORMAL_support", "leakfree_n_test"):
        assert key in full, key
    # ...and each of its numbers is an MLflow metric of the evaluate run too
    con = sqlite3.connect(project / "mlflow.db")
    logged = {k for (k,) in con.execute("SELECT DISTINCT key FROM metrics")}
    numbers = [k for k, v in full.items() if isinstance(v, (int, float)) and not isinstance(
        v, bool) and k not in SETTINGS]
    missing = [k for k in numbers if (f"evaluate_{k}" if k in VALIDATION else metric_name(k))
               not in logged and k != "threshold_chosen"]
    assert not missing, missing
    assert "threshold_chosen" in logged
    # the complete records are MLflow artifacts of the run as well
    import mlflow

    run_id = json.loads((project / "models/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    names = {a.path for folder in ("evaluate", "validate", "train")
             for a in client.list_artifacts(run_id, folder)}
    for name in ("evaluate/evaluate.json", "evaluate/table3.json", "evaluate/champion_gate.json",
                 "evaluate/predictions_val.csv", "validate/validation.json", "train/train.json"):
        assert name in names, (name, sorted(names))


def test_model_file_loads_and_predicts(project: Path) -> None:
    import keras
    import numpy as np

    model = keras.saving.load_model(project / "models/model.keras")
    prob = model.predict(np.zeros((2, 32, 32, 1), "float32"), verbose=0)
    assert prob.shape == (2, 1)
    assert np.all((prob >= 0) & (prob <= 1))


def test_mlflow_run_in_repo_root_sqlite_store(project: Path) -> None:
    db = project / "mlflow.db"
    assert db.is_file(), "the default store is sqlite at the repository root"
    con = sqlite3.connect(db)
    params = dict(con.execute(  # the pipeline's run, not the reference runs (they have params too)
        "SELECT key, value FROM params WHERE run_uuid NOT IN "
        "(SELECT run_uuid FROM tags WHERE key = 'pipeline.reference')").fetchall())
    assert float(params["lr"]) == pytest.approx(1e-4)
    metric_keys = {k for (k,) in con.execute("SELECT DISTINCT key FROM metrics")}
    assert {"test_accuracy", "test_NORMAL_recall", "test_PNEUMONIA_precision"} <= metric_keys
    tags = dict(con.execute("SELECT key, value FROM tags").fetchall())
    # the commit the pipeline ran on (the fixture committed the results on top of it)
    assert tags.get("mlflow.source.git.commit") == git(project, "rev-parse", "HEAD~1").strip()


def test_second_repro_runs_nothing(project: Path) -> None:
    proc = dvc(project, "repro")
    assert "Running stage" not in proc.stdout, proc.stdout
    assert "up to date" in dvc(project, "status").stdout


def test_balance_param_change_reruns_only_downstream(project: Path) -> None:
    params = project / "params.yaml"
    original = params.read_text()
    try:
        raw = yaml.safe_load(original)
        raw["balance"]["target_normal"] = 120
        params.write_text(yaml.safe_dump(raw, sort_keys=False))
        ran = dvc(project, "repro", "split").stdout  # up to split: train would take a minute
        status = dvc(project, "status", "--json").stdout
    finally:
        params.write_text(original)
    assert "Running stage 'balance'" in ran and "Running stage 'split'" in ran
    for stage in ("ingest", "validate"):
        assert f"Running stage '{stage}'" not in ran
    assert set(json.loads(status)) == {"train", "evaluate"}  # their input, data/split.csv, changed
    # Back to the committed params: restored from DVC's run cache, not recomputed.
    back = dvc(project, "repro").stdout
    assert "Running stage" not in back, back


def test_exp_run_lr_reruns_only_train_and_evaluate(project: Path) -> None:
    proc = dvc(project, "exp", "run", "-S", "lr=2e-6")
    ran = {line.split("'")[1] for line in proc.stdout.splitlines() if "Running stage" in line}
    assert ran == {"train", "evaluate"}, proc.stdout
    name = proc.stdout.split("Ran experiment(s):")[1].split()[0]

    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    exps = [
        exp for rev in shown for exp in (rev.get("experiments") or [])
        if exp.get("name") == name
    ]
    assert exps, f"experiment {name} not in `dvc exp show`"
    data = exps[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["lr"] == pytest.approx(2e-6)  # a number
    assert "accuracy" in data["metrics"]["metrics/evaluate.json"]["data"]

    # Its own MLflow run, named after the experiment, in the repository-root store.
    con = sqlite3.connect(project / "mlflow.db")
    (run_uuid,) = con.execute("SELECT run_uuid FROM runs WHERE name = ?", (name,)).fetchone()
    lr = con.execute(
        "SELECT value FROM params WHERE run_uuid = ? AND key = 'lr'", (run_uuid,)
    ).fetchone()[0]
    assert float(lr) == pytest.approx(2e-6)
    diff = json.loads(dvc(project, "metrics", "diff", "--all", "--json").stdout)
    assert "metrics/evaluate.json" in diff  # deltas vs the committed results
    assert "accuracy_ci_low" in diff["metrics/evaluate.json"]  # flat keys: intervals shown too

    # The paired comparison of the committed results with the experiment, by its name.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "pneumonia", "compare", "HEAD", name, "--resamples", "500"],
        cwd=project, env=env, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"## Paired comparison: {name} (" in proc.stdout
    assert "| accuracy |" in proc.stdout and "McNemar" in proc.stdout


def test_data_stages_are_byte_identical_from_scratch(project: Path) -> None:
    before = lock_out_hashes(project, DATA_STAGES)
    for out in ("data/images", "data/balanced", "data/manifest.csv", "data/balanced.csv",
                "data/split.csv"):
        path = project / out
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(project / ".dvc/cache")  # no cache, no run cache: really recompute
    dvc(project, "repro", "--force", "--no-run-cache", "split")
    assert lock_out_hashes(project, DATA_STAGES) == before
