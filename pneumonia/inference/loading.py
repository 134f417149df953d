"""Which model `pneumonia predict` / `explain` use, and its decision threshold.
Over 400 lines on purpose: one subject, resolving `--model` to a model with its threshold,
calibration and provenance, whose lookups share the registry and run readers below.

`--model` takes a Keras file (`models/model.keras`), a run's model (`runs:/<run_id>/model`), or a
registered model (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `models:/m-<id>`). Without it:
the registry's `champion` (params.yaml `evaluate.registry_name`) when the MLflow store holds one,
else `models/model.keras` (the workspace's last training). Every failure to find a model is a
usage error (PipelineError: one message, exit 2).

The threshold: the one recorded with a registered version (tag `threshold`, set by evaluate's
gate), else the one evaluate used for the workspace's model (metrics/evaluate.json), else
params.yaml `evaluate.threshold`. `--threshold chosen` asks for the one evaluate chose on the
validation images instead (`threshold_chosen` with `evaluate.threshold_rule: youden`).

The conformal calibration (`qhat`, pneumonia.stats.conformal), when there is one: the logged
model's config (`conformal`, set by evaluate), or for the workspace's model
metrics/details/evaluate.json `conformal_qhat`. Without one, predictions carry no prediction set.

The provenance (pneumonia.provenance: trained on the bundled sample, the full dataset or other
data): the logged model's MLmodel metadata, else the registered version's `provenance.*` tags; for
models/model.keras its training run's tags, else the workspace's data/manifest.csv. `warning` is
set when the model was trained on the bundled sample (predict and explain print it).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumonia import provenance
from pneumonia.errors import PipelineError
from pneumonia.params import load_params
from pneumonia.paths import EVALUATE_DETAILS, EVALUATE_JSON, MODEL_FILE
from pneumonia.pipeline_run import read_run_file
from pneumonia.provenance import warning
from pneumonia.tracking import tracking_uri

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

DEFAULT_REGISTRY_NAME = "pneumonia-densenet201"
CHAMPION = "champion"
# metrics/evaluate.json: the threshold evaluate applied (`threshold`): the one behind the headline
# test metrics and the registry gate. `threshold_chosen` (Youden on validation) is reported beside
# it and used only when asked for: `--threshold chosen` (CHOSEN).
THRESHOLD_KEYS = ("threshold",)
CHOSEN = "chosen"


# A site's calibrated version (pneumonia.site, `pneumonia site calibrate`): alias site-NAME. The
# name rule lives here, below pneumonia.site, so that `predict --site` needs nothing above it.
SITE_PREFIX = "site-"
_SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def check_site_name(name: str) -> str:
    """The site name, or a PipelineError saying what a valid one looks like."""
    if not isinstance(name, str) or not _SITE_NAME.fullmatch(name):
        raise PipelineError(
            f"--site {name!r}: not a valid site name. Use 1-40 lower-case letters, digits and "
            "'-', starting with a letter or digit (e.g. st-marys, site2); it becomes the "
            f"registry alias {SITE_PREFIX}NAME.")
    return name


def site_alias(name: str) -> str:
    """The registry alias of the site's calibrated version."""
    return SITE_PREFIX + check_site_name(name)


def site_uri(name: str) -> str:
    """`--site NAME` as a model URI: models:/<registry name>@site-NAME."""
    return f"models:/{registry_name()}@{site_alias(name)}"


@dataclass
class Loaded:
    model: keras.Model
    source: str  # what was loaded: a file path or a resolved MLflow URI
    threshold: float
    threshold_from: str  # where the threshold came from (shown to the user)
    # conformal calibration of this model, if evaluate made one (a pair, per label: a site's)
    qhat: float | tuple[float, float] | None = None
    qhat_from: str = ""
    provenance: dict[str, str] = field(default_factory=dict)  # what it was trained on
    site: dict[str, Any] | None = None  # a site calibration's record (pneumonia.site), if any
    promotion: str | None = None  # "promoted to champion by hand by ..." (pneumonia.promote)

    @property
    def warning(self) -> str | None:
        """Why its answers must not be trusted (trained on the bundled sample), else None."""
        return warning(self.provenance)

    @property
    def size(self) -> int:
        return int(self.model.input_shape[1])


def registry_name(params_file: Path = Path("params.yaml")) -> str:
    """params.yaml `evaluate.registry_name` when readable, else the default name."""
    try:
        return load_params(params_file).evaluate.registry_name
    except (PipelineError, OSError):
        return DEFAULT_REGISTRY_NAME


def _params_threshold() -> tuple[float, str] | None:
    try:
        return load_params().evaluate.threshold, "params.yaml evaluate.threshold"
    except (PipelineError, OSError):
        return None


def workspace_threshold() -> tuple[float, str] | None:
    """The threshold evaluate used for models/model.keras (metrics/evaluate.json), else params."""
    try:
        doc = json.loads(EVALUATE_JSON.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {}
    for key in THRESHOLD_KEYS:
        value = doc.get(key) if isinstance(doc, dict) else None
        if isinstance(value, (int, float)) and 0 < value < 1:
            return float(value), f"{EVALUATE_JSON} {key}"
    return _params_threshold()


def store_uri() -> str | None:
    """The MLflow store `pneumonia.tracking` uses, or None when it is a sqlite file that does
    not exist yet (opening it would create an empty store)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None
    return uri


# Reading the registry's aliases, failing closed (also the evaluate stage's gate: pneumonia.registry)
def not_found(exc: Exception) -> bool:
    """An MLflow error that says the registered model (or alias) does not exist."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def aliases(client: Any, name: str) -> dict[str, str] | None:
    """The registered model's aliases ({alias: version}); None when there is no such registered
    model. Any other error of the store propagates: it never reads as "no champion"."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if not_found(exc):
            return None
        raise
    return {str(k): str(v) for k, v in (model.aliases or {}).items()}


# `pneumonia promote` (pneumonia.promote) records a champion moved by hand in these version tags;
# `pneumonia predict` shows them.
TAG_PROMOTED_BY, TAG_PROMOTE_REASON, TAG_PROMOTED_AT = "promote.by", "promote.reason", "promote.at"
TAG_GATE_SAID = "promote.gate_said"


def promotion_note(tags: dict[str, str]) -> str | None:
    """One line saying a version was promoted to champion by hand (None when it was not)."""
    if TAG_PROMOTED_BY not in tags:
        return None
    return (f"promoted to champion by hand by {tags[TAG_PROMOTED_BY]} at "
            f"{tags.get(TAG_PROMOTED_AT, '?')}: {tags.get(TAG_PROMOTE_REASON, '')} (the gate "
            f"said: {tags.get(TAG_GATE_SAID, '?')})")


def champion_version(client: Any, name: str) -> str | None:
    """The version holding `champion`; None only when the model or the alias does not exist."""
    return (aliases(client, name) or {}).get(CHAMPION)


def champion_uri(name: str) -> str | None:
    """`models:/NAME@champion` when the store has that alias, None when it has no such model or
    alias. Any other error of the store (locked, unreachable) is a PipelineError: predicting with
    another model than the champion because the registry could not be read would be silent."""
    uri = store_uri()
    if uri is None:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    try:
        version = champion_version(mlflow.MlflowClient(), name)
    except MlflowException as exc:
        raise PipelineError(f"cannot read the `{CHAMPION}` of {name!r} from the MLflow store "
                            f"{uri} ({exc.message}): retry, or pass --model.") from None
    return None if version is None else f"models:/{name}@{CHAMPION}"


def _load_keras_file(path: Path) -> keras.Model:
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError, OSError, zip errors
        raise PipelineError(f"{path}: cannot load it as a Keras model ({exc})") from None


def _keras_file_in(folder: Path, uri: str) -> Path:
    found = sorted(p for p in folder.rglob("*.keras") if p.is_file())
    if len(found) != 1:
        raise PipelineError(f"{uri}: expected one Keras model file (.keras) in the logged model, "
                            f"found {len(found)}; is it a model logged by this pipeline?")
    return found[0]


def mlflow_threshold(uri: str) -> tuple[float, str] | None:
    """The threshold recorded with a registered version (tag) or the model's config."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/", 1)[0]
        try:
            tags = client.get_run(run_id).data.tags
        except MlflowException:
            return None
        if "evaluate.threshold" in tags:
            return float(tags["evaluate.threshold"]), f"run {run_id} tag `evaluate.threshold`"
        return None
    rest = uri[len("models:/"):]
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        elif "/" in rest:
            name, version = rest.split("/", 1)
            mv = client.get_model_version(name, version)
        else:
            mv = None
    except MlflowException:
        mv = None
    if mv is not None and "threshold" in (mv.tags or {}):
        return float(mv.tags["threshold"]), f"{uri} (model version tag `threshold`)"
    return None


def _chosen_from_run(run_id: str, what: str) -> tuple[float, str]:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        data = mlflow.MlflowClient().get_run(run_id).data
    except MlflowException:
        raise PipelineError(f"--threshold {CHOSEN}: the evaluate run {run_id} of {what} is not "
                            "in the store; give --threshold a number.") from None
    rule = data.params.get("evaluate.threshold_rule")
    if rule != "youden" or "threshold_chosen" not in data.metrics:
        raise PipelineError(
            f"--threshold {CHOSEN}: {what} was evaluated with threshold_rule {rule or 'unknown'}, "
            "so no threshold was chosen on the validation images. Set evaluate.threshold_rule: "
            "youden in params.yaml and run `dvc repro evaluate`, or give --threshold a number.")
    return float(data.metrics["threshold_chosen"]), f"{what} threshold_chosen (youden, validation)"


def chosen_threshold(spec: str) -> tuple[float, str]:
    """`--threshold chosen`: the threshold evaluate chose on the validation images for this model
    (`threshold_chosen`, `evaluate.threshold_rule: youden`), never one tuned on the test set.
    A usage error when none was chosen (rule `fixed`) or the model has no evaluate record.
    Resolved before the model is loaded: a wrong request fails in a second, not after a load."""
    if spec.startswith(("runs:/", "models:/")):
        import mlflow

        store = store_uri()
        if store is None:
            raise PipelineError(f"--threshold {CHOSEN}: {spec}: the MLflow store {tracking_uri()} "
                                "does not exist; set MLFLOW_TRACKING_URI or give a .keras file.")
        mlflow.set_tracking_uri(store)
    if spec.startswith("runs:/"):
        return _chosen_from_run(spec[len("runs:/"):].split("/", 1)[0], spec)
    if spec.startswith("models:/"):
        import mlflow
        from mlflow.exceptions import MlflowException

        rest, mv = spec[len("models:/"):], None
        try:
            if "@" in rest:
                mv = mlflow.MlflowClient().get_model_version_by_alias(*rest.split("@", 1))
            elif "/" in rest:
                mv = mlflow.MlflowClient().get_model_version(*rest.split("/", 1))
        except MlflowException:
            mv = None
        run_id = (mv.tags or {}).get("evaluate_run_id") if mv is not None else None
        if not run_id:
            raise PipelineError(f"--threshold {CHOSEN}: {spec} has no evaluate run recorded (tag "
                                "`evaluate_run_id`); give --threshold a number.")
        return _chosen_from_run(run_id, spec)
    if Path(spec).resolve() != MODEL_FILE.resolve():
        raise PipelineError(f"--threshold {CHOSEN}: nothing records a threshold chosen for {spec} "
                            f"(only {MODEL_FILE}, via {EVALUATE_DETAILS}, and registered models do); "
                            "give --threshold a number.")
    try:
        doc = json.loads(EVALUATE_DETAILS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PipelineError(f"--threshold {CHOSEN}: {EVALUATE_DETAILS} is missing or unreadable; run "
                            "`dvc repro evaluate` first, or give --threshold a number.") from None
    rule = doc.get("threshold_rule") if isinstance(doc, dict) else None
    value = doc.get("threshold_chosen") if isinstance(doc, dict) else None
    if rule != "youden" or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise PipelineError(
            f"--threshold {CHOSEN}: {EVALUATE_DETAILS} has threshold_rule {rule or 'unknown'}, so no "
            "threshold was chosen on the validation images. Set evaluate.threshold_rule: youden in "
            "params.yaml and run `dvc repro evaluate`, or give --threshold a number.")
    return float(value), f"{EVALUATE_DETAILS} threshold_chosen (youden, validation)"


def _describe_aliases(name: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        rm = mlflow.MlflowClient().get_registered_model(name)
    except MlflowException:
        return f"the store has no registered model {name!r}"
    aliases = sorted(rm.aliases or {})
    return (f"{name!r} has aliases {', '.join(aliases)}" if aliases
            else f"{name!r} has no aliases")


def workspace_qhat() -> tuple[float, str] | None:
    """metrics/details/evaluate.json `conformal_qhat` (evaluate's calibration of models/model.keras)."""
    try:
        value = json.loads(EVALUATE_DETAILS.read_text(encoding="utf-8")).get("conformal_qhat")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(value, (int, float)) and 0 <= value <= 1:
        return float(value), f"{EVALUATE_DETAILS} conformal_qhat"
    return None


def _logged_qhat(local: Path, uri: str) -> tuple[float, str] | None:
    """The `conformal` calibration in a downloaded model's MLmodel file (pyfunc config)."""
    import yaml

    try:
        mlmodel = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
        conformal = mlmodel["flavors"]["python_function"]["config"]["conformal"]
        value = conformal["qhat"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    per_class = conformal.get("qhat_per_class") if isinstance(conformal, dict) else None
    if isinstance(per_class, list) and len(per_class) == 2:  # a site calibration, per label
        return tuple(float(q) for q in per_class), f"{uri} (model config `conformal`, per class)"
    return (float(value), f"{uri} (model config `conformal`)") \
        if isinstance(value, (int, float)) else None


def _logged_site(local: Path) -> dict[str, Any] | None:
    """The site calibration record in a downloaded model's config (pneumonia.site), if any."""
    import yaml

    try:
        mlmodel = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
        site = mlmodel["flavors"]["python_function"]["config"].get("site")
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    return site if isinstance(site, dict) else None


def _download(uri: str) -> Path:
    """The files logged under a runs:/ or models:/ URI, downloaded: a clear error for a missing
    store, an unknown alias or model, unreadable files."""
    import mlflow
    from mlflow.exceptions import MlflowException

    store = store_uri()
    if store is None:
        raise PipelineError(f"{uri}: the MLflow store {tracking_uri()} does not exist (no model "
                            "was trained here); set MLFLOW_TRACKING_URI or give a .keras file.")
    mlflow.set_tracking_uri(store)
    rest = uri[len("models:/"):] if uri.startswith("models:/") else ""
    if "@" in rest:  # check the alias first: a clear message instead of MLflow's
        name, alias = rest.split("@", 1)
        try:
            mlflow.MlflowClient().get_model_version_by_alias(name, alias)
        except MlflowException:
            raise PipelineError(f"{uri}: unknown alias {alias!r} ({_describe_aliases(name)}). "
                                "Aliases are set by the evaluate stage's champion gate.") from None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as exc:
        raise PipelineError(f"{uri}: no such model in the store {store} ({exc.message})") from None
    except OSError as exc:
        raise PipelineError(f"{uri}: cannot read the model's files ({exc})") from None
    return local


def _load_mlflow(uri: str) -> tuple[keras.Model, str, Path]:
    local = _download(uri)
    return _load_keras_file(_keras_file_in(local, uri)), uri, local


def keras_file_of(spec: str, prefix: str = "--model ") -> Path:
    """The Keras file behind a model spec: the path itself, or the one file logged under a
    runs:/ or models:/ URI (downloaded); the model is not loaded. `prefix` starts the message
    for a missing file (the option that named it)."""
    if spec.startswith(("runs:/", "models:/")):
        return _keras_file_in(_download(spec), spec)
    path = Path(spec)
    if not path.is_file():
        raise PipelineError(f"{prefix}{spec}: no such file. Give a .keras file, "
                            "runs:/<run_id>/model or models:/NAME@ALIAS.")
    return path


def load(spec: str | None, threshold: float | str | None = None) -> Loaded:
    """Resolve `--model` (None: the champion, else models/model.keras) and the threshold (a
    number, None for the recorded one, or CHOSEN for the validation-chosen one)."""
    if spec is None:
        spec = champion_uri(registry_name())
        if spec is None:
            if not MODEL_FILE.is_file():
                raise PipelineError(
                    f"no model to use: the MLflow store has no `{CHAMPION}` for "
                    f"{registry_name()!r} and {MODEL_FILE} does not exist. Train one "
                    "(`make demo` or `dvc repro`), or pass --model (a .keras file, "
                    "runs:/<run_id>/model or models:/NAME@ALIAS).")
            spec = str(MODEL_FILE)
    is_file_spec = not spec.startswith(("runs:/", "models:/"))
    if is_file_spec:
        keras_file_of(spec)  # a clear error for a missing file, before anything else
    chosen_first = chosen_threshold(spec) if threshold == CHOSEN else None
    qhat: tuple[Any, str] | None = None
    site = None
    if not is_file_spec:
        model, source, local = _load_mlflow(spec)
        recorded = mlflow_threshold(spec)
        qhat = _logged_qhat(local, spec)
        site = _logged_site(local)
    else:
        path = Path(spec)
        model, source = _load_keras_file(path), str(path)
        workspace = path.resolve() == MODEL_FILE.resolve()
        recorded = workspace_threshold() if workspace else None
        qhat = workspace_qhat() if workspace else None
    shape: Any = model.input_shape
    if not (isinstance(shape, tuple) and len(shape) == 4 and shape[1] == shape[2]
            and shape[3] == 1):
        raise PipelineError(f"{source}: not a model of this pipeline (input shape {shape}, "
                            "expected (None, S, S, 1) gray pixels)")
    if chosen_first is not None:
        chosen, origin = chosen_first
    elif threshold is not None:
        chosen, origin = threshold, "--threshold"
    else:
        chosen, origin = recorded or _params_threshold() or (0.5, "default 0.5")
    promotion = None
    if spec.startswith("models:/"):
        promotion = promotion_note(version_tags(spec))
    return Loaded(model, source, float(chosen), origin, *(qhat or (None, "")),
                  provenance=provenance_of(spec), site=site, promotion=promotion)


def version_tags(uri: str) -> dict[str, str]:
    """The tags of the registered version `uri` (models:/NAME@ALIAS or /VERSION) names."""
    import mlflow
    from mlflow.exceptions import MlflowException

    rest = uri[len("models:/"):]
    client = mlflow.MlflowClient()
    try:
        if "@" in rest:
            mv = client.get_model_version_by_alias(*rest.split("@", 1))
        elif "/" in rest:
            mv = client.get_model_version(*rest.split("/", 1))
        else:
            return {}
    except MlflowException:
        return {}
    return dict(mv.tags or {})


def provenance_of(spec: str) -> dict[str, str]:
    """What the model `spec` (a resolved --model) was trained on ({} when nothing says)."""
    from mlflow.exceptions import MlflowException

    if spec.startswith(("runs:/", "models:/")):
        from mlflow.models import Model

        try:
            meta = Model.load(spec).metadata or {}
        except (MlflowException, OSError):
            meta = {}
        prov = meta.get("provenance")
        if isinstance(prov, dict) and prov:
            return {str(k): str(v) for k, v in prov.items()}
        return provenance.from_tags(version_tags(spec)) if spec.startswith("models:/") else {}
    if Path(spec).resolve() != MODEL_FILE.resolve():
        return {}
    try:  # the workspace's model: its training run's tags, else the workspace's manifest
        import mlflow

        if store_uri() is not None:
            tags = mlflow.MlflowClient(store_uri()).get_run(read_run_file()["run_id"]).data.tags
            if provenance.from_tags(tags):
                return provenance.from_tags(tags)
    except (PipelineError, MlflowException, OSError):
        pass
    try:
        data = load_params().data
        return provenance.describe(data.raw, data.image_size)
    except (PipelineError, OSError, KeyError, ValueError):
        return {}
