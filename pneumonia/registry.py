"""Model registry: every evaluated model is a version; `champion` moves only through the gate
(pneumonia.gate). Without a shared lock: the champion is what the gate gives when the versions
are gated one at a time in version order, each evaluation replays them and settles the aliases;
any store error other than "no such model" fails closed. The design, its races and the windows
it leaves open: docs/using-the-model.md ("Two evaluations at once", "Fails closed").
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pneumonia import provenance
from pneumonia.errors import PipelineError
from pneumonia.files import write_json
from pneumonia.gate import CHALLENGER, CHAMPION, Anchor, Decision, Entry, decide, test_set_id
from pneumonia.inference.loading import aliases, champion_version, not_found
from pneumonia.inference.pyfunc import conformal_config, log_model
from pneumonia.paths import MODEL_FILE, PREDICTIONS_CSV, REGISTRY_JSON

if TYPE_CHECKING:
    from pneumonia.params import Params

log = logging.getLogger(__name__)

PREDICTIONS_ARTIFACT = f"evaluate/{PREDICTIONS_CSV.name}"
NONE = "none"
PROTOCOL = "2"  # versions registered with the tags below; older ones are read as they are
TAG_RUN, TAG_THRESHOLD, TAG_ACCURACY = "evaluate_run_id", "threshold", "test_accuracy"
TAG_PROTOCOL = "gate.protocol"
TAG_FLOOR, TAG_MARGIN, TAG_TEST_SET = "gate.min_accuracy", "gate.margin", "gate.test_set"
TAG_ALIAS_AT_REGISTRATION = "gate.champion_at_registration"  # the starting point after old ones
TAG_DECISION, TAG_REASON, TAG_COMPARED = "gate.decision", "gate.reason", "gate.compared_with"
TAG_ANCHOR = "gate.anchor"
TAG_CHAMPION_AFTER = "gate.champion_after"  # written last: the decision is complete
MAX_ROUNDS = 20
TAG_LIMIT = 5000  # MLflow's longest tag value


# --------------------------------------------------------------------------------------------
# Reading the store, failing closed
# --------------------------------------------------------------------------------------------
def _versions(client: Any, name: str) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return sorted(out, key=lambda mv: int(mv.version))


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _predictions(client: Any, run_id: str, cache: dict[str, pd.DataFrame]) -> pd.DataFrame:
    if run_id not in cache:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, tmp)
            cache[run_id] = read_predictions(Path(local))
    return cache[run_id]


def _entry(client: Any, mv: Any, cache: dict[str, pd.DataFrame],
           predictions: pd.DataFrame | None = None) -> Entry:
    """A version as the gate sees it; `error` says why its predictions are unreadable."""
    from mlflow.exceptions import MlflowException

    tags = mv.tags or {}
    entry = Entry(str(mv.version), _float(tags.get(TAG_ACCURACY)),
                  _float(tags.get(TAG_THRESHOLD)) or 0.5, predictions,
                  provenance.dataset_of(provenance.from_tags(tags)))
    if entry.predictions is not None:
        return entry
    run_id = tags.get(TAG_RUN)
    if not run_id:
        entry.error = f"the version has no tag `{TAG_RUN}`"
        return entry
    try:
        entry.predictions = _predictions(client, run_id, cache)
    except (MlflowException, OSError, ValueError, KeyError) as exc:
        entry.error = (f"its test predictions (run {run_id}, {PREDICTIONS_ARTIFACT}) are "
                       f"unreadable: {exc}")
    return entry


# --------------------------------------------------------------------------------------------
# The replay: versions gated one at a time, in version order
# --------------------------------------------------------------------------------------------
@dataclass
class State:
    """The registry after the versions replayed so far."""

    champion: str | None = None
    challenger: str | None = None
    anchors: dict[str, Anchor] = field(default_factory=dict)  # test-set id -> best champion
    decided: list[int] = field(default_factory=list)  # the versions this replay saw


def _apply(state: State, mv: Any) -> None:
    tags = mv.tags or {}
    after = tags[TAG_CHAMPION_AFTER]
    state.champion = None if after == NONE else after
    if tags.get(TAG_DECISION) == CHAMPION:
        test_set, acc = tags.get(TAG_TEST_SET), _float(tags.get(TAG_ACCURACY))
        best = state.anchors.get(test_set or "")
        if test_set and acc is not None and (best is None or acc > best.accuracy):
            state.anchors[test_set] = Anchor(acc, str(mv.version))
    elif tags.get(TAG_DECISION) == CHALLENGER:
        state.challenger = str(mv.version)


class _Undecidable(Exception):
    """Another evaluation's version cannot be gated by this process now (artifact unreadable)."""


def _gate(client: Any, name: str, mv: Any, state: State, cache: dict[str, pd.DataFrame],
          own_predictions: pd.DataFrame | None) -> Decision:
    """Decide one version against the state before it. Only the owner (the evaluation that
    registered it) records `challenger` for "cannot compare with the champion"; for another
    evaluation's version an unreadable artifact raises _Undecidable instead (the owner, or a
    later evaluation, decides it), so a transient read error here is never written as a fact."""
    owner = own_predictions is not None
    tags = mv.tags or {}
    cand = _entry(client, mv, cache, own_predictions)
    champ = None
    if state.champion is not None:
        from mlflow.exceptions import MlflowException

        try:
            champ = _entry(client, client.get_model_version(name, state.champion), cache)
        except MlflowException as exc:
            if not not_found(exc):
                raise
            # Deleted by hand: a fact every process sees alike. The anchors still hold.
            log.warning("champion version %s of %r no longer exists", state.champion, name)
    assert cand.predictions is not None or cand.error
    anchor = None if cand.predictions is None else state.anchors.get(
        tags.get(TAG_TEST_SET) or test_set_id(cand.predictions))
    # The anchor is compared by its predictions (pneumonia.gate rule 6), not its accuracy.
    anchor_entry = None
    if anchor is not None and anchor.version not in (state.champion, str(mv.version)):
        from mlflow.exceptions import MlflowException

        try:
            anchor_entry = _entry(client, client.get_model_version(name, anchor.version), cache)
        except MlflowException as exc:
            if not not_found(exc):
                raise
            # Deleted by hand: its predictions are gone, nothing to compare with.
            log.warning("anchor version %s of %r no longer exists: no anchor", anchor.version,
                        name)
            anchor = None
    for entry in (cand, champ, anchor_entry):
        if not owner and entry is not None and entry.error:
            raise _Undecidable(f"version {entry.version}: {entry.error}")
    assert cand.predictions is not None
    return decide(cand, _float(tags.get(TAG_FLOOR)) or 0.0, _float(tags.get(TAG_MARGIN)) or 0.0,
                  champ, anchor, anchor_entry)


def _record(client: Any, name: str, version: str, decision: Decision, state: State) -> Any:
    """Write the decision's tags (the marker `gate.champion_after` last); return the version as
    stored. Another process deciding the same version at the same moment writes the same values:
    MLflow's tag upsert then fails for one of them (a unique-key race inside the store), which
    reads back as "already written"."""
    from mlflow.exceptions import MlflowException

    after = version if decision.alias == CHAMPION else (state.champion or NONE)
    anchor = decision.details.get("anchor_accuracy")
    for key, value in {TAG_REASON: decision.reason[:TAG_LIMIT],
                       TAG_COMPARED: str(decision.details.get("champion_version", NONE)),
                       TAG_ANCHOR: NONE if anchor is None else
                       f"{anchor:.6g} (version {decision.details.get('anchor_version')})",
                       TAG_DECISION: decision.alias,
                       TAG_CHAMPION_AFTER: after}.items():
        try:
            client.set_model_version_tag(name, version, key, value)
        except MlflowException:
            stored = client.get_model_version(name, version)
            if TAG_CHAMPION_AFTER in (stored.tags or {}):
                return stored  # completed by the other process: its record stands
            if (stored.tags or {}).get(key) != value:
                client.set_model_version_tag(name, version, key, value)  # once more, or raise
    return client.get_model_version(name, version)


def _replay(client: Any, name: str, own: int, own_predictions: pd.DataFrame,
            cache: dict[str, pd.DataFrame]) -> tuple[State, Decision | None]:
    """Gate every undecided version in version order (this evaluation's and any other visible
    one: whoever gets there first records the same decision); return the state after the
    highest version decided and `own`'s decision (None when another process recorded it)."""
    state = State()
    mine: Decision | None = None
    started = False
    for mv in _versions(client, name):
        tags, number = mv.tags or {}, int(mv.version)
        if TAG_RUN not in tags:
            continue  # registered by hand, not by this pipeline: not gated
        if TAG_PROTOCOL not in tags:
            # Registered before this protocol: its decision stands; the champion after the old
            # versions is the alias the first new version saw when it was registered.
            if tags.get(TAG_DECISION) == CHALLENGER:
                state.challenger = str(number)
            continue
        if not started:
            started = True
            state.champion = tags.get(TAG_ALIAS_AT_REGISTRATION) or None
        if TAG_CHAMPION_AFTER not in tags:
            try:
                decision = _gate(client, name, mv, state, cache,
                                 own_predictions if number == own else None)
            except _Undecidable as exc:
                if number < own:  # this version's decision depends on it
                    raise PipelineError(
                        f"cannot gate version {number} of {name!r}, registered by another "
                        f"evaluation before this one ({exc}), so not this one either. The "
                        "champion is unchanged; re-run the evaluate stage.") from None
                log.warning("version %s of %r (another evaluation's) cannot be gated from "
                            "here now (%s): left to its evaluation", number, name, exc)
                break
            fresh = client.get_model_version(name, mv.version)
            if TAG_CHAMPION_AFTER in (fresh.tags or {}):
                mv = fresh  # decided meanwhile by its owner or a third evaluation: adopt it
            else:
                mv = _record(client, name, str(number), decision, state)
            if number == own and (mv.tags or {}).get(TAG_REASON) == decision.reason[:TAG_LIMIT]:
                mine = decision  # recorded as this process decided it (details included)
        state.decided.append(number)
        _apply(state, mv)
    return state, mine


def _settle(client: Any, name: str, own: int, own_predictions: pd.DataFrame,
            ) -> tuple[State, Decision]:
    """Replay, set the aliases from the result, and replay again until nothing moved."""
    cache: dict[str, pd.DataFrame] = {}
    mine: Decision | None = None
    state = State()
    for _ in range(MAX_ROUNDS):
        state, decided_now = _replay(client, name, own, own_predictions, cache)
        mine = mine or decided_now
        current = aliases(client, name) or {}
        if state.champion is not None and current.get(CHAMPION) != state.champion:
            client.set_registered_model_alias(name, CHAMPION, state.champion)
        if state.challenger is not None and current.get(CHALLENGER) != state.challenger:
            client.set_registered_model_alias(name, CHALLENGER, state.challenger)
        # Anything decided since the replay (a later version's owner) may have set the aliases
        # before we did: replay again and set them from the newer state.
        again, _ = _replay(client, name, own, own_predictions, cache)
        if (again.decided, again.champion) == (state.decided, state.champion):
            break
    if mine is None:  # another evaluation recorded this version's decision: read it back
        tags = client.get_model_version(name, str(own)).tags or {}
        mine = Decision(tags.get(TAG_DECISION, CHALLENGER), tags.get(TAG_REASON, ""),
                        {"champion_version": tags.get(TAG_COMPARED),
                         "note": "decided by a concurrent evaluation from the same records"})
    return state, mine


# --------------------------------------------------------------------------------------------
# The evaluate stage's entry point
# --------------------------------------------------------------------------------------------
def model_to_register(run_file: dict[str, Any], threshold: float,
                      prov: dict[str, str] | None = None,
                      conformal: dict[str, Any] | None = None) -> str:
    """The served pyfunc model, logged here to the active run from models/model.keras (the train
    stage logs none). A run file written by older code names one (`model_uri`): it is reused
    when it is in this store with evaluate's threshold (the served label must match) and
    conformal calibration (`conformal`, evaluate's: the served prediction set)."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    uri = run_file.get("model_uri")
    if uri:
        try:
            config = Model.load(uri).flavors.get("python_function", {}).get("config") or {}
            same_threshold = abs(float(config.get("threshold", -1)) - threshold) < 1e-12
            if same_threshold and config.get("conformal") == conformal:
                return uri
            why = (f"has threshold {config.get('threshold')}, evaluate uses {threshold:g}"
                   if not same_threshold else
                   "has another conformal calibration than evaluate's (or none)")
            log.info("logged model %s %s: logging a copy", uri, why)
        except (MlflowException, OSError) as exc:
            log.info("model %s not usable from this store (%s): logging it again", uri, exc)
    return log_model(MODEL_FILE, threshold, conformal=conformal, provenance=prov)


def logged_provenance(model_uri: str) -> dict[str, str]:
    """The provenance in a logged model's MLmodel metadata ({} when none or unreadable)."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        meta = Model.load(model_uri).metadata or {}
    except (MlflowException, OSError):
        return {}
    prov = meta.get("provenance")
    return {str(k): str(v) for k, v in prov.items()} if isinstance(prov, dict) else {}


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    if aliases(client, name) is not None:
        return
    try:
        client.create_registered_model(
            name, description="Pneumonia classifier (chest X-ray). Aliases: champion (passed the "
            "gate, used by `pneumonia predict`), challenger (the latest that did not).")
    except MlflowException as exc:
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":  # created meanwhile
            raise


def _number(value: Any) -> str:
    """A metric as tag text that reads back to the same float ("" when undefined)."""
    return "" if value is None else repr(float(value))


def register_and_gate(params: Params, run_file: dict[str, Any], metrics: dict[str, Any],
                      predictions: pd.DataFrame, run_id: str,
                      prov: dict[str, str] | None = None) -> tuple[Decision, str]:
    """Register this run's model, settle the aliases through the gate, log the decision.
    Returns (this version's decision, version). Call inside the evaluate run. `prov`: the
    training data's provenance (default: from data/manifest.csv and params.data)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    e = params.evaluate
    name = e.registry_name
    REGISTRY_JSON.unlink(missing_ok=True)  # never leave a previous run's "champion" behind
    client = mlflow.MlflowClient()
    threshold = float(metrics["threshold"])
    if prov is None:
        prov = provenance.describe(params.data.raw, params.data.image_size,
                                   run_file.get("run_id"))
    version: str | None = None
    try:
        model_uri = model_to_register(run_file, threshold, prov, conformal_config(metrics))
        prov = logged_provenance(model_uri) or prov
        _ensure_registered_model(client, name)
        tags = {TAG_RUN: run_id, TAG_THRESHOLD: f"{threshold:g}",
                TAG_ACCURACY: _number(metrics.get("accuracy")), TAG_PROTOCOL: PROTOCOL,
                TAG_FLOOR: _number(e.champion_min_accuracy),
                TAG_MARGIN: _number(e.champion_margin),
                TAG_TEST_SET: test_set_id(predictions),
                TAG_ALIAS_AT_REGISTRATION: champion_version(client, name) or "",
                **provenance.as_tags(prov)}
        # A tracking server (REST store) refuses a `models:/m-...` source unless model_id names
        # the logged model it points at ("The model_id request parameter must identify the
        # resource that contains the source"); the local sqlite store accepts it either way.
        model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None
        mv = client.create_model_version(name, model_uri, run_id=run_id, tags=tags,
                                         model_id=model_id)
        version = str(mv.version)
        state, decision = _settle(client, name, int(mv.version), predictions)
    except MlflowException as exc:
        done = ("Nothing was registered or promoted: the champion is unchanged." if version is None
                else f"Version {version} was registered but its gate did not finish: the champion "
                "alias is where the recorded decisions put it (version tags gate.*); the next "
                "evaluation settles this version.")
        raise PipelineError(
            f"model registry {name!r} at {mlflow.get_tracking_uri()}: {exc.message} "
            f"({exc.error_code}). {done} Re-run the evaluate stage when the store is back "
            "(`dvc repro evaluate`).") from None
    assert version is not None
    holds = (CHAMPION if state.champion == version else
             CHALLENGER if state.challenger == version else None)
    # `alias`: what this version holds after every version this stage saw was settled
    # (`versions_seen`); a version registered later may move it on, after comparing with it.
    doc: dict[str, Any] = {"registered_model": name, "version": int(version),
                           "model_uri": model_uri, "alias": holds, "decision": decision.alias,
                           "reason": decision.reason, "champion_version": state.champion,
                           "versions_seen": max(state.decided, default=int(version)),
                           "provenance": prov, "details": decision.details}
    if decision.alias == CHAMPION and holds != CHAMPION:
        doc["superseded_by"] = state.champion  # a later version, gated against this one
    mlflow.set_tags({"gate.decision": decision.alias, "gate.reason": decision.reason[:TAG_LIMIT],
                     "gate.registered_model": name, "gate.version": version})
    mlflow.log_dict(doc, "evaluate/champion_gate.json")
    write_json(doc, REGISTRY_JSON)
    log.info("registered %s version %s: %s (%s); champion is version %s", name, version,
             decision.alias, decision.reason, state.champion)
    if prov.get("dataset") == provenance.SAMPLE:
        log.warning("version %s: %s", version, provenance.warning(prov))
    return decision, version


def read_predictions(path: Path = PREDICTIONS_CSV) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str, "patient_id": str})


