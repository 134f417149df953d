"""`pneumonia promote VERSION --reason TEXT`: a human moves the registry's `champion` alias.

The gate (pneumonia.gate) promotes only a version that is non-inferior to the champion on the
same test set; after any change of the test set nothing can be compared, so the gate can never
replace the champion again (correctly). Then a person decides. This command

1. shows what the gate would say about VERSION against the current champion (and the anchor);
2. moves `champion` to VERSION (MLflow's registry API) and writes the promoted version into the
   registry's log (tag `gate.champion_after` of the newest decided version, its former value
   kept in `promote.overrode_champion_after`), so the next evaluation's replay
   (pneumonia.registry) gates against VERSION instead of undoing the move;
3. records who, why and when: the version's tags `promote.by`, `promote.reason`, `promote.at`
   (UTC), `promote.gate_said`, `promote.previous_champion`; its description (shown on the MLflow
   registry page) and the registered model's tag `champion.promoted_by_hand`. `pneumonia predict`
   says so when it serves such a champion.
"""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime
from typing import Any

from pneumonia.errors import PipelineError
from pneumonia.gate import CHALLENGER, Anchor, Decision, decide, test_set_id
from pneumonia.inference.loading import (
    TAG_GATE_SAID,
    champion_version,
    promotion_note,
)
from pneumonia.inference.loading import TAG_PROMOTE_REASON as TAG_REASON
from pneumonia.inference.loading import TAG_PROMOTED_AT as TAG_AT
from pneumonia.inference.loading import TAG_PROMOTED_BY as TAG_BY

TAG_PREVIOUS = "promote.previous_champion"
TAG_OVERRODE = "promote.overrode_champion_after"
MODEL_TAG = "champion.promoted_by_hand"
__all__ = ["gate_opinion", "promote", "promotion_note"]


def gate_opinion(client: Any, name: str, version: str) -> tuple[Any, str | None]:
    """(the gate's Decision for ``version`` against the registry as it is now, the champion's
    version). Reads only: the registry's decided versions give the champion and the anchors."""
    from pneumonia import registry  # MLflow: ~1.5 s, not paid by `pneumonia --help`
    state = registry.State()
    started = False
    for mv in registry._versions(client, name):
        tags = mv.tags or {}
        if registry.TAG_PROTOCOL not in tags or registry.TAG_CHAMPION_AFTER not in tags:
            continue
        if not started:
            started = True
            state.champion = tags.get(registry.TAG_ALIAS_AT_REGISTRATION) or None
        state.decided.append(int(mv.version))
        registry._apply(state, mv)
    current = champion_version(client, name)
    cache: dict[str, Any] = {}
    mv = client.get_model_version(name, version)
    cand = registry._entry(client, mv, cache)
    champ = None
    if current is not None and current != version:
        champ = registry._entry(client, client.get_model_version(name, current), cache)
    anchor: Anchor | None = None
    anchor_entry = None
    if cand.predictions is not None:
        tags = mv.tags or {}
        anchor = state.anchors.get(tags.get(registry.TAG_TEST_SET)
                                   or test_set_id(cand.predictions))
        if anchor is not None and anchor.version not in (current, version):
            from mlflow.exceptions import MlflowException

            try:
                anchor_entry = registry._entry(
                    client, client.get_model_version(name, anchor.version), cache)
            except MlflowException:  # deleted by hand: no anchor (as in pneumonia.registry)
                anchor = None
    tags = mv.tags or {}
    floor = registry._float(tags.get(registry.TAG_FLOOR)) or 0.0
    margin = registry._float(tags.get(registry.TAG_MARGIN)) or 0.0
    if cand.predictions is None:
        return Decision(CHALLENGER, f"cannot judge: {cand.error}"), current
    return decide(cand, floor, margin, champ, anchor, anchor_entry), current


def promote(client: Any, name: str, version: str, reason: str, by: str | None = None) -> dict:
    """Move `champion` of ``name`` to ``version`` and record it (module docstring). Returns what
    was recorded, with the gate's opinion."""
    from mlflow.exceptions import MlflowException

    from pneumonia import registry

    if not reason.strip():
        raise PipelineError("--reason is empty: say why this version should be champion (it "
                            "is recorded in the registry).")
    try:
        mv = client.get_model_version(name, version)
    except MlflowException as exc:
        raise PipelineError(f"registered model {name!r} has no version {version!r} "
                            f"({exc.message}): list them in the MLflow UI or with "
                            "`mlflow.MlflowClient().search_model_versions`.") from None
    if champion_version(client, name) == str(mv.version):
        raise PipelineError(f"version {mv.version} of {name!r} is already the champion: "
                            "nothing to promote.")
    decision, previous = gate_opinion(client, name, str(mv.version))
    said = f"{decision.alias}: {decision.reason}"[: registry.TAG_LIMIT]
    who = by or os.environ.get("PNEUMONIA_USER") or getpass.getuser()
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = {TAG_BY: who, TAG_REASON: reason[: registry.TAG_LIMIT], TAG_AT: when,
              TAG_GATE_SAID: said, TAG_PREVIOUS: previous or registry.NONE}
    for key, value in record.items():
        client.set_model_version_tag(name, str(mv.version), key, value)
    client.update_model_version(name, str(mv.version), description=(
        f"Champion promoted by hand by {who} at {when}: {reason}. The gate said: {said}")[:5000])
    # The registry's log: the newest decided version's `gate.champion_after` names the champion
    # every later replay starts from (pneumonia.registry); without this the next evaluation's
    # settle would move the alias back.
    decided = [v for v in registry._versions(client, name)
               if registry.TAG_CHAMPION_AFTER in (v.tags or {})]
    if decided:
        newest = decided[-1]
        old = (newest.tags or {})[registry.TAG_CHAMPION_AFTER]
        if old != str(mv.version):
            client.set_model_version_tag(name, str(newest.version), TAG_OVERRODE, old)
            client.set_model_version_tag(name, str(newest.version), registry.TAG_CHAMPION_AFTER,
                                         str(mv.version))
    client.set_registered_model_alias(name, registry.CHAMPION, str(mv.version))
    client.set_registered_model_tag(name, MODEL_TAG, f"version {mv.version} by {who} at {when}: "
                                    f"{reason}"[: registry.TAG_LIMIT])
    return {"version": str(mv.version), "previous_champion": previous, "gate": decision.alias,
            "gate_reason": decision.reason, "by": who, "at": when, "reason": reason}


