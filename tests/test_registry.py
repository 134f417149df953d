"""The champion gate: the pure decision (pneumonia.gate), then registration and settling in a real
MLflow sqlite store (pneumonia.registry), then the evaluate stage itself doing it (slow). The race
of two evaluations on a tracking server: tests/test_registry_race.py."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from pneumonia.errors import PipelineError
from pneumonia.gate import CHALLENGER, CHAMPION, Anchor, Entry, decide
from pneumonia.inference.loading import aliases
from tests.registrykit import (
    ACTUAL,
    FULL,
    GOOD,
    SAMPLE,
    accuracy,
    evaluate_once,
    gate_params,
    log_stand_in_model,
    predictions,
    wrong_on,
)
from tests.synthkit import brightness_model, write_project
from tests.trainkit import run_stage, write_params

COIN = np.random.default_rng(0).uniform(0, 1, 200)  # about half right


def cand(prob: np.ndarray, threshold: float = 0.5, dataset: str = "full", **kw: object) -> Entry:
    frame = kw.pop("frame", None)
    frame = predictions(prob) if frame is None else frame
    actual = (frame["actual"] == "PNEUMONIA").to_numpy(dtype=int)
    return Entry("9", accuracy(frame["probability"].to_numpy(), threshold, actual), threshold,
                 frame, dataset)


def champ(prob: np.ndarray, threshold: float = 0.5, dataset: str = "full",
          version: str = "1") -> Entry:
    return Entry(version, accuracy(prob, threshold), threshold, predictions(prob), dataset)


def test_first_model_above_the_floor_becomes_champion() -> None:
    d = decide(cand(GOOD), 0.9, 0.02, None)
    assert d.alias == CHAMPION and "no champion" in d.reason


def test_below_the_floor_is_challenger_even_without_champion() -> None:
    d = decide(cand(COIN), 0.9, 0.02, None)
    assert d.alias == CHALLENGER and "below the floor" in d.reason


def test_clearly_worse_than_the_champion_is_challenger() -> None:
    d = decide(cand(COIN), 0.0, 0.02, champ(GOOD))
    assert d.alias == CHALLENGER and "not shown non-inferior" in d.reason
    assert d.details["delta_ci_high"] < 0 and d.details["mcnemar_pvalue"] < 0.001
    assert d.details["common_test_images"] == 200


def test_not_significantly_worse_is_not_enough() -> None:
    """Issue 33 item 5: champion wrong on 8 images, candidate on 10 others: not significantly
    worse (the interval holds 0), but its lower bound lies below -margin, so it is not shown
    non-inferior and the champion stays. The old rule ("not significantly worse") promoted it."""
    champion, candidate = wrong_on(slice(0, 8)), wrong_on(slice(100, 110))
    d = decide(cand(candidate), 0.9, 0.02, champ(champion))
    assert d.details["accuracy_delta"] == pytest.approx(-0.01)
    assert d.details["delta_ci_low"] < -0.02 < 0 < d.details["delta_ci_high"]
    assert d.alias == CHALLENGER and "not shown non-inferior" in d.reason
    assert d.details["non_inferior"] is False
    # a wider margin admits it: the rule is the lower bound against -margin, nothing else
    wide = decide(cand(candidate), 0.9, -d.details["delta_ci_low"] + 0.001, champ(champion))
    assert wide.alias == CHAMPION and "non-inferior" in wide.reason


def test_a_candidate_close_to_the_champion_takes_the_alias() -> None:
    """Candidate wrong on 7 of the champion's 8 errors: +0.005, interval [0, +0.01]."""
    champion, candidate = wrong_on(slice(0, 8)), wrong_on(slice(0, 7))
    d = decide(cand(candidate), 0.9, 0.02, champ(champion))
    assert d.details["delta_ci_low"] > -0.02
    assert d.alias == CHAMPION and d.details["non_inferior"] is True, d.reason


def test_each_model_is_scored_at_its_own_threshold() -> None:
    """The champion's threshold is 0.3: there it is right on every image; at the candidate's 0.5
    it would be wrong on 60 PNEUMONIA images (and the candidate, wrong on 4, would look better)."""
    champion = np.where(ACTUAL == 1, 0.4, 0.1)
    champion[np.flatnonzero(ACTUAL == 1)[60:]] = 0.9
    assert accuracy(champion, 0.3) == 1.0 and accuracy(champion, 0.5) == pytest.approx(0.7)
    candidate = wrong_on([0])
    d = decide(cand(candidate), 0.5, 0.02, champ(champion, threshold=0.3))
    assert d.details["champion_accuracy"] == pytest.approx(1.0)
    assert d.details["candidate_accuracy"] == pytest.approx(0.995)
    assert d.details["thresholds"] == [0.3, 0.5]
    assert d.alias == CHAMPION, d.reason  # 0.995 vs 1.0: lower bound above -0.02
    # with a margin of 0.01 the lower bound is below -margin against the champion's 1.0 (at
    # ITS threshold; at 0.5 it would be 0.7 and the candidate would look better): challenger
    d = decide(cand(candidate), 0.5, 0.01, champ(champion, threshold=0.3))
    assert d.alias == CHALLENGER and "not shown non-inferior" in d.reason


def test_partial_overlap_is_refused_not_compared() -> None:
    """The issue's case: a candidate evaluated on other images, 4 of 200 shared with the
    champion, was made champion on those 4."""
    other = predictions(GOOD, prefix="img", first=196)  # img0196..img0395: 4 in common
    d = decide(cand(GOOD, frame=other), 0.5, 0.02, champ(GOOD))
    assert d.alias == CHALLENGER
    assert "different test images" in d.reason and "196 only here" in d.reason
    assert "champion_accuracy" not in d.details  # nothing compared


def test_relabelled_images_are_refused_not_dropped() -> None:
    """20 images with another label: the old gate dropped them and compared the rest."""
    frame = predictions(GOOD)
    flipped = frame["actual"].where(frame.index >= 20,
                                    frame["actual"].map({"NORMAL": "PNEUMONIA",
                                                         "PNEUMONIA": "NORMAL"}))
    frame = frame.assign(actual=flipped)
    d = decide(cand(GOOD, frame=frame), 0.0, 1.0, champ(GOOD))
    assert d.alias == CHALLENGER
    assert "20 with another `actual`" in d.reason


def test_unreadable_champion_keeps_the_champion() -> None:
    broken = Entry("4", 0.99, 0.5, None, "full", error="artifact missing")
    d = decide(cand(GOOD), 0.5, 0.02, broken)
    assert d.alias == CHALLENGER and "artifact missing" in d.reason


def test_the_anchor_is_compared_by_its_predictions_not_its_point_accuracy() -> None:
    """Issue 33 item 5. Anchor version 1 right everywhere (1.0); champion version 2 and the
    candidate both wrong on images 0, 2, 4 (0.985): non-inferior to the champion (identical).
    Against the anchor the candidate is 1.5 points lower: within the 0.02 margin of the anchor's
    point accuracy (the old rule promoted it), but the paired interval's lower bound lies below
    -0.02, so it is not shown non-inferior to the anchor."""
    errors = wrong_on([0, 2, 4])
    anchor = champ(GOOD, version="1")
    d = decide(cand(errors), 0.5, 0.02, champ(errors, version="2"), Anchor(1.0, "1"), anchor)
    assert d.details["test_accuracy"] >= 1.0 - 0.02  # the point anchor would have passed
    assert d.details["non_inferior"] is True  # against the champion
    assert d.details["anchor_test"]["ci_low"] < -0.02 < d.details["anchor_test"]["delta"]
    assert d.alias == CHALLENGER and "non-inferior to the anchor, version 1" in d.reason
    # no champion (alias removed) does not lift the anchor
    d = decide(cand(errors), 0.5, 0.02, None, Anchor(1.0, "1"), anchor)
    assert d.alias == CHALLENGER and "anchor" in d.reason
    # an anchor whose predictions are gone blocks rather than passes blindly
    d = decide(cand(errors), 0.5, 0.02, None, Anchor(1.0, "1"), None)
    assert d.alias == CHALLENGER and "cannot compare with the anchor" in d.reason
    # a candidate as good as the anchor passes it
    d = decide(cand(GOOD), 0.5, 0.02, champ(errors, version="2"), Anchor(1.0, "1"), anchor)
    assert d.alias == CHAMPION and "anchor, version 1" in d.reason


def test_an_undefined_primary_metric_never_takes_the_champion() -> None:
    """Issue 33 item 5 (issue 35 item 1): a test set without a NORMAL image (zero support,
    ROC AUC undefined) gives a model nothing comparable, even at accuracy 1.0 and no champion."""
    frame = predictions(GOOD)
    only_pneumonia = frame[frame["actual"] == "PNEUMONIA"].reset_index(drop=True)
    d = decide(cand(GOOD, frame=only_pneumonia), 0.5, 0.02, None)
    assert d.details["test_accuracy"] == 1.0
    assert d.alias == CHALLENGER and "zero support" in d.reason and "NORMAL" in d.reason


def test_a_demo_never_displaces_a_full_dataset_champion() -> None:
    d = decide(cand(GOOD, dataset="sample"), 0.0, 1.0, champ(COIN, dataset="full"))
    assert d.alias == CHALLENGER and "bundled sample" in d.reason
    # a full-dataset model replaces a demo champion (their test sets differ: no comparison)
    other = predictions(wrong_on(slice(0, 10)), prefix="full")
    d = decide(cand(GOOD, frame=other), 0.9, 0.02, champ(GOOD, dataset="sample"))
    assert d.alias == CHAMPION and "demo model" in d.reason
    # two demos are compared as usual
    d = decide(cand(COIN, dataset="sample"), 0.0, 0.02, champ(GOOD, dataset="sample"))
    assert d.alias == CHALLENGER and "not shown non-inferior" in d.reason


# --------------------------------------------------------------------------------------------
# Real MLflow store
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real sqlite store for the module (creating its schema takes ~10 s); each test
    registers under its own model name."""
    import mlflow

    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("t", artifact_location=(folder / "mlruns").as_uri())
    mlflow.set_experiment(experiment_id=exp)
    return {"uri": uri, "db": folder / "mlflow.db", "experiment": exp,
            "model": log_stand_in_model()}


@pytest.fixture
def store(module_store: dict, workdir: Path) -> dict:
    import mlflow

    mlflow.set_tracking_uri(module_store["uri"])
    mlflow.set_experiment(experiment_id=module_store["experiment"])
    return module_store | {"client": mlflow.MlflowClient()}


def test_register_and_gate_in_a_real_store(store: dict, workdir: Path) -> None:
    client, exp, model = store["client"], store["experiment"], store["model"]
    first, v1, _ = evaluate_once(exp, GOOD, gate_params(floor=0.9), model)
    assert (first.alias, v1) == (CHAMPION, "1")
    worse, v2, run2 = evaluate_once(exp, COIN, gate_params(floor=0.0, margin=0.02), model)
    assert (worse.alias, v2) == (CHALLENGER, "2") and "not shown non-inferior" in worse.reason
    low, v3, _ = evaluate_once(exp, COIN, gate_params(floor=0.9), model)
    assert v3 == "3" and low.alias == CHALLENGER and "below the floor" in low.reason

    assert aliases(client, "pneu") == {CHAMPION: "1", CHALLENGER: "3"}
    tags = client.get_model_version("pneu", "2").tags
    assert tags["gate.decision"] == CHALLENGER and tags["evaluate_run_id"] == run2
    assert tags["threshold"] == "0.5" and tags["gate.compared_with"] == "1"
    assert tags["gate.champion_after"] == "1" and tags["provenance.dataset"] == "full"
    run_tags = client.get_run(run2).data.tags
    assert run_tags["gate.decision"] == CHALLENGER and "non-inferior" in run_tags["gate.reason"]
    gate = json.loads(Path(client.download_artifacts(run2, "evaluate/champion_gate.json",
                                                     str(workdir))).read_text())
    assert gate["decision"] == gate["alias"] == CHALLENGER and gate["version"] == 2
    on_disk = json.loads((workdir / "metrics" / "registry.json").read_text())
    assert on_disk["version"] == 3 and on_disk["alias"] == CHALLENGER
    assert on_disk["champion_version"] == "1" and "below the floor" in on_disk["reason"]


def test_the_same_model_source_passes_the_floor_again(store: dict) -> None:
    """Re-registering the champion's own model (same source) is gated like any other: a raised
    floor keeps it out."""
    exp, model = store["experiment"], store["model"]
    first, _, _ = evaluate_once(exp, GOOD, gate_params(floor=0.9, name="same"), model)
    assert first.alias == CHAMPION
    again, _, _ = evaluate_once(exp, wrong_on(slice(0, 4)),
                                gate_params(floor=0.99, name="same"), model)
    assert again.alias == CHALLENGER and "below the floor" in again.reason
    assert aliases(store["client"], "same")[CHAMPION] == "1"


def test_a_chain_of_slightly_worse_models_cannot_slide(store: dict) -> None:
    """Each candidate is wrong on 2 more images than the last (0.995, 0.99, ...), each within
    the 0.04 margin of the champion before it. The anchor (version 1, compared by its
    predictions) stops the chain once the paired interval against version 1 reaches -0.04;
    without it (margin 1) the same chain walks the champion down to the floor."""
    exp, model, client = store["experiment"], store["model"], store["client"]
    chain = [wrong_on(list(range(0, 2 * k, 2))) for k in range(8)]  # 1.000, 0.995, ..., 0.965
    for prob in chain:
        evaluate_once(exp, prob, gate_params(floor=0.9, margin=0.04, name="chain"), model)
    champion = client.get_model_version_by_alias("chain", CHAMPION)
    assert float(champion.tags["test_accuracy"]) > 0.965  # stopped before the end
    refused = [client.get_model_version("chain", str(v)).tags for v in range(1, 9)]
    blocked = [t for t in refused if t["gate.decision"] == CHALLENGER]
    assert blocked and all("anchor, version 1" in t["gate.reason"]
                           and t["gate.anchor"] == "1 (version 1)" for t in blocked)


def test_the_champion_set_by_hand_as_documented(store: dict) -> None:
    """docs/using-the-model.md: set the alias and the newest version's `gate.champion_after`;
    the next evaluation is then gated against that version (the alias alone would be undone)."""
    exp, model, client = store["experiment"], store["model"], store["client"]
    for prob in (GOOD, wrong_on([0])):  # 1.00, then 0.995: champion moves to version 2
        evaluate_once(exp, prob, gate_params(floor=0.9, name="hand"), model)
    assert aliases(client, "hand")[CHAMPION] == "2"
    client.set_registered_model_alias("hand", CHAMPION, "1")
    client.set_model_version_tag("hand", "2", "gate.champion_after", "1")
    evaluate_once(exp, wrong_on([100]), gate_params(floor=0.9, name="hand"), model)
    assert client.get_model_version("hand", "3").tags["gate.compared_with"] == "1"
    assert aliases(client, "hand")[CHAMPION] == "3"


def test_without_the_anchor_the_same_chain_slides() -> None:
    """The chain above is a real slide: each step alone passes the comparison with the champion
    (within noise), so a gate that compares with the current champion only walks it down."""
    chain = [wrong_on(slice(0, 2 * k)) for k in range(9)]  # 1.00, 0.99, ..., 0.92
    champion = champ(chain[0])
    for k, prob in enumerate(chain[1:], start=2):
        d = decide(cand(prob), 0.9, 1.0, champion)  # margin 1: no anchor in effect
        assert d.alias == CHAMPION and d.details["non_inferior"]
        champion = champ(prob, version=str(k))
    assert champion.accuracy == pytest.approx(0.92)


def test_store_errors_never_read_as_no_champion(store: dict, workdir: Path) -> None:
    """Only "no such registered model" means no champion. A real sqlite store whose registry
    cannot be read (its alias table gone: the same TEMPORARILY_UNAVAILABLE error as a locked
    database) stops the stage; nothing is promoted and no registry.json claims anything."""
    from mlflow.exceptions import MlflowException

    from pneumonia.inference.loading import champion_version

    exp, model, client = store["experiment"], store["model"], store["client"]
    assert champion_version(client, "closed") is None  # no such model: no champion
    evaluate_once(exp, GOOD, gate_params(floor=0.9, name="closed"), model)
    client.delete_registered_model_alias("closed", CHAMPION)
    assert champion_version(client, "closed") is None  # no such alias: no champion
    client.set_registered_model_alias("closed", CHAMPION, "1")
    with sqlite3.connect(store["db"]) as db:
        db.execute("ALTER TABLE registered_model_aliases RENAME TO aliases_away")
    try:
        with pytest.raises(MlflowException):
            champion_version(client, "closed")
        with pytest.raises(PipelineError, match="champion is unchanged"):
            evaluate_once(exp, COIN, gate_params(floor=0.0, margin=1.0, name="closed"), model)
        assert not (workdir / "metrics" / "registry.json").exists()
    finally:
        with sqlite3.connect(store["db"]) as db:
            db.execute("ALTER TABLE aliases_away RENAME TO registered_model_aliases")
    assert champion_version(client, "closed") == "1"


@pytest.mark.slow  # ~20 s: MLflow's sqlite busy timeout before "database is locked"
def test_a_locked_database_is_not_no_champion(store: dict) -> None:
    from mlflow.exceptions import MlflowException

    from pneumonia.inference.loading import champion_version

    evaluate_once(store["experiment"], GOOD, gate_params(floor=0.9, name="locked"),
                  store["model"])
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        db = sqlite3.connect(store["db"], isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(60)
        db.execute("ROLLBACK")
        db.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        with pytest.raises(MlflowException, match="database is locked"):
            champion_version(store["client"], "locked")
    finally:
        release.set()
        holder.join()
    assert champion_version(store["client"], "locked") == "1"


def test_provenance_travels_with_the_version_and_the_served_model(store: dict) -> None:
    """A sample-trained model: its version's tags and the pyfunc's answer say so."""
    import base64

    import mlflow
    import pandas as pd

    from pneumonia.inference.pyfunc import log_model
    from tests.inference.dicomkit import png_bytes
    from tests.synthkit import synthetic_image

    brightness_model(32).save("model.keras")
    with mlflow.start_run(experiment_id=store["experiment"]):
        uri = log_model(Path("model.keras"), 0.5, provenance=SAMPLE)
    _, version, _ = evaluate_once(store["experiment"], GOOD,
                                  gate_params(floor=0.0, name="demo"), uri, prov={})
    tags = store["client"].get_model_version("demo", version).tags
    assert tags["provenance.dataset"] == "sample" and tags["provenance.images"] == "284"
    model = mlflow.pyfunc.load_model(f"models:/demo/{version}")
    assert model.metadata.metadata["provenance"]["dataset"] == "sample"
    img = png_bytes(synthetic_image(np.random.default_rng(1), 32, positive=True))
    answer = model.predict(pd.DataFrame({"image": [base64.b64encode(img).decode()]}))
    assert answer["label"].tolist() == ["PNEUMONIA"]
    assert answer["trained_on"].tolist() == ["sample"]
    assert "bundled sample" in answer["warning"][0]
    # ... and a full-dataset champion is never displaced by it
    full, _, _ = evaluate_once(store["experiment"], wrong_on(slice(0, 10)),
                               gate_params(floor=0.9, name="full"), store["model"], FULL)
    demo, _, _ = evaluate_once(store["experiment"], GOOD, gate_params(floor=0.0, name="full"),
                               uri, prov={})
    assert full.alias == CHAMPION and demo.alias == CHALLENGER
    assert "never displaces" in demo.reason


@pytest.mark.slow  # ~45 s: three evaluate stages, each a fresh Python importing TensorFlow
def test_evaluate_stage_registers_and_gates(tmp_path: Path) -> None:
    """The evaluate stage itself: a right model becomes champion, a wrong one (above a zero
    floor) and a constant one (below the floor) become challenger; the champion stays."""
    root = tmp_path / "project"
    write_project(root, size=32)
    (root / "models").mkdir()
    # a training run from elsewhere: evaluate logs to a new run and logs the model itself
    (root / "models" / "mlflow_run.json").write_text(json.dumps(
        {"tracking_uri": "sqlite:///elsewhere.db", "experiment_id": "1", "run_id": "0" * 32}))
    outcomes = []
    for model, floor in ((brightness_model(32), 0.9), (brightness_model(32, sign=-1), 0.0),
                         (brightness_model(32, constant=0.9), 0.9)):
        model.save(root / "models" / "model.keras")
        # margin 0.05: the wrong model is far from non-inferior (a margin of 1.0 would admit
        # any model: the lower bound of a difference of accuracies is never below -1)
        write_params(root, evaluate__champion_min_accuracy=floor, evaluate__champion_margin=0.05)
        r = run_stage(root, "evaluate", timeout=240)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        outcomes.append(json.loads((root / "metrics" / "registry.json").read_text()))
    assert [o["decision"] for o in outcomes] == [CHAMPION, CHALLENGER, CHALLENGER]
    assert "no champion" in outcomes[0]["reason"]
    assert "not shown non-inferior" in outcomes[1]["reason"]
    assert "below the floor" in outcomes[2]["reason"]
    assert outcomes[2]["alias"] == CHALLENGER and outcomes[2]["champion_version"] == "1"
    assert outcomes[0]["provenance"]["dataset"] == "other"  # synthetic images
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("pneumonia-densenet201", CHAMPION).version) == "1"


def test_promote_by_hand_after_the_test_set_changed(store: dict) -> None:
    """Issue 33 item 6. After the test set changes the gate can never replace the champion
    (nothing to compare). `pneumonia promote` shows what the gate says, moves `champion`,
    records who / why / when, and the next evaluation is gated against the promoted version
    instead of undoing the move."""
    from pneumonia.inference.loading import version_tags
    from pneumonia.promote import promote, promotion_note

    exp, model, client = store["experiment"], store["model"], store["client"]
    evaluate_once(exp, GOOD, gate_params(floor=0.9, name="promo"), model)
    new_set = predictions(GOOD, prefix="siteb")
    moved, v2, _ = evaluate_once(exp, GOOD, gate_params(floor=0.9, name="promo"), model,
                                 frame=new_set)
    assert moved.alias == CHALLENGER and "not comparable" in moved.reason
    with pytest.raises(PipelineError, match="no version '9'"):
        promote(client, "promo", "9", "typo")
    with pytest.raises(PipelineError, match="--reason is empty"):
        promote(client, "promo", v2, "  ")
    done = promote(client, "promo", v2, "new test set from site B", by="alice")
    assert done["gate"] == CHALLENGER and "not comparable" in done["gate_reason"]
    assert done["previous_champion"] == "1"
    assert aliases(client, "promo")[CHAMPION] == v2
    with pytest.raises(PipelineError, match="already the champion"):
        promote(client, "promo", v2, "again")
    mv = client.get_model_version("promo", v2)
    assert mv.tags["promote.by"] == "alice" and mv.tags["promote.reason"].startswith("new test")
    assert mv.tags["promote.at"].endswith("Z") and mv.tags["promote.previous_champion"] == "1"
    assert mv.tags["promote.gate_said"].startswith("challenger: not comparable")
    assert "promoted by hand by alice" in mv.description
    assert "by alice" in client.get_registered_model("promo").tags["champion.promoted_by_hand"]
    # `pneumonia predict` reads the same note from the champion's tags
    note = promotion_note(version_tags("models:/promo@champion"))
    assert note is not None and "by hand by alice" in note and "site B" in note
    # the next evaluation on the new test set is compared with the promoted version
    again, v3, _ = evaluate_once(exp, GOOD, gate_params(floor=0.9, name="promo"), model,
                                 frame=new_set)
    assert client.get_model_version("promo", v3).tags["gate.compared_with"] == v2
    assert again.alias == CHAMPION and aliases(client, "promo")[CHAMPION] == v3
    assert promotion_note(version_tags("models:/promo@champion")) is None  # gated, not by hand
