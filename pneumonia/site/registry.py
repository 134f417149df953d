"""A site's version in the model registry: the same weights, the site's calibration.

`site calibrate` logs the base model's Keras file again as a pyfunc whose config carries the
site's threshold, conformal quantiles and the `site` record (pneumonia.inference.pyfunc), and
registers it as a new version of the same registered model (params.yaml
`evaluate.registry_name`) with the alias ``site-NAME`` and tags ``site.*`` (the site, the rule,
alpha, delta, the labelled images per class, the labelled set's sha256, the base version).

It never touches ``champion`` or ``challenger``, and the evaluate stage's gate leaves it alone:
the gate replays only versions with an ``evaluate_run_id`` tag (pneumonia.registry), which a
site version does not carry. A site name already in use is refused unless ``replace`` is set;
then the alias moves to the new version and the old version stays in the registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumonia import tracking
from pneumonia.errors import PipelineError
from pneumonia.inference import loading
from pneumonia.paths import MODEL_FILE
from pneumonia.site import names

TAG_PREFIX = "site."


@dataclass(frozen=True)
class Base:
    """The model a site calibration starts from."""

    spec: str  # as resolved: models:/NAME@champion, a .keras path, ...
    keras_file: Path
    version: str | None  # its registered version, when it is one
    provenance: dict[str, str]


def site_version(name: str, site: str) -> str | None:
    """The version holding `site-NAME`, None when there is none (or no such model/store)."""
    import mlflow

    uri = loading.store_uri()
    if uri is None:
        return None
    mlflow.set_tracking_uri(uri)
    return (loading.aliases(mlflow.MlflowClient(), name) or {}).get(names.alias(site))


def check_free(name: str, site: str, replace: bool) -> str | None:
    """Refuse an existing site name without `replace` (before anything is computed); return
    the version it holds now."""
    held = site_version(name, site)
    if held is not None and not replace:
        raise PipelineError(
            f"site {site!r} exists: {name!r} version {held} holds the alias "
            f"{names.alias(site)}. Pick another --site name, or pass --replace to calibrate it "
            "again (the alias moves to the new version; the old version stays registered).")
    return held


def resolve_base(spec: str | None) -> Base:
    """The base model's Keras file (downloaded for a registered one) and what it is."""
    if spec is None:
        spec = loading.champion_uri(loading.registry_name())
        if spec is None:
            if not MODEL_FILE.is_file():
                raise PipelineError(
                    f"no model to calibrate: the MLflow store has no `champion` for "
                    f"{loading.registry_name()!r} and {MODEL_FILE} does not exist; pass --model.")
            spec = str(MODEL_FILE)
    keras_file = loading.keras_file_of(spec)  # clear errors for unknown aliases, stores, files
    version = _version_of(spec) if spec.startswith("models:/") else None
    return Base(spec, keras_file, version, loading.provenance_of(spec))


def _version_of(uri: str) -> str | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    rest = uri[len("models:/"):]
    try:
        if "@" in rest:
            return str(mlflow.MlflowClient().get_model_version_by_alias(*rest.split("@", 1))
                       .version)
        if "/" in rest:
            return rest.split("/", 1)[1]
    except MlflowException:
        return None
    return None


def register(name: str, site: str, base: Base, threshold: float, conformal: dict[str, Any],
             record: dict[str, Any], tags: dict[str, str]) -> tuple[str, str]:
    """Log the site's pyfunc to a new run, register it, point `site-NAME` at it; return
    (version, run id). Nothing else in the registry changes."""
    import mlflow
    from mlflow.exceptions import MlflowException

    # Here, not at the top: both import MLflow (3.1 CPU-s measured, AMD EPYC, 2026-12-07), which
    # every `pneumonia` command would pay, as the CLI imports the command modules for --help.
    from pneumonia.inference.pyfunc import log_model
    from pneumonia.registry import _ensure_registered_model

    alias = names.alias(site)
    tracking.setup()
    client = mlflow.MlflowClient()
    try:
        with mlflow.start_run(run_name=f"site-calibrate {site}") as run:
            mlflow.set_tags({**tags, "pneumonia.command": "site calibrate"})
            mlflow.log_dict(record, "site/calibration.json")
            model_uri = log_model(base.keras_file, threshold, conformal=conformal,
                                  provenance=base.provenance or None, site=record)
        _ensure_registered_model(client, name)
        model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None
        mv = client.create_model_version(name, model_uri, run_id=run.info.run_id,
                                         tags={"threshold": f"{threshold:g}", **tags},
                                         model_id=model_id)
        client.set_registered_model_alias(name, alias, mv.version)
    except MlflowException as exc:
        raise PipelineError(f"model registry {name!r} at {mlflow.get_tracking_uri()}: "
                            f"{exc.message}. The champion is unchanged; run again when the "
                            "store is back.") from None
    return str(mv.version), run.info.run_id


def open_base(spec: str | None, site: str, replace: bool, dry_run: bool,
              ) -> tuple[str, str | None, Base, Any]:
    """What `site calibrate` and `site adapt` start from: the registered model's name, the
    version a --replace supersedes (None for a dry run), the base model and its Keras model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    name = loading.registry_name()
    replaced = None if dry_run else check_free(name, site, replace)
    base = resolve_base(spec)
    return name, replaced, base, loading._load_keras_file(base.keras_file)
