"""A seed ensemble as one Keras model: `pneumonia ensemble MODEL... --out FILE.keras`.

Deep ensembles (Lakshminarayanan et al. 2017) are the best-documented defence of calibration
under dataset shift (Ovadia et al. 2019); here they are the models of one recipe trained with
different seeds. The ensemble is a functional model ``xray -> [member_1(xray), ...,
member_N(xray)] -> Average``: each member keeps its own preprocessing layers, BatchNorm
statistics and head, and the output is the mean of the members' outputs (P(PNEUMONIA), or the
three-class softmax), exactly what averaging their predictions does (a test checks it). It is
one .keras file, so everything that takes a model takes it unchanged: `pneumonia predict
--model`, `site calibrate --model` (which registers it, with the site's threshold and conformal
sets, as one servable MLflow model), `site adapt` (AdaBN re-estimates every member's
BatchNorm layers), `site check` (the members' penultimate features side by side, `embedding`)
and Grad-CAM (`Cam`: the members' heatmaps averaged).

Why a Keras model rather than an MLflow pyfunc averaging N registered versions: the registry,
the server, AdaBN and Grad-CAM then need no second code path, and the N members travel in one
artifact whose bytes the registry hashes once. Measured on the official test set treated as a
new site: docs/new-site.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumonia.errors import PipelineError
from pneumonia.files import sha256_file
from pneumonia.inference import loading

PREFIX = "member_"  # members' layer names in the ensemble: member_1, member_2, ...
OUTPUT = "ensemble_mean"  # the ensemble's output layer


@dataclass(frozen=True)
class Member:
    spec: str  # as given: a .keras path, runs:/..., models:/NAME@ALIAS
    keras_file: Path
    sha256: str


def is_ensemble(model: Any) -> bool:
    """Whether `model` was built by `build` (its output layer is the members' average)."""
    try:
        return model.get_layer(OUTPUT) is not None
    except ValueError:
        return False


def members_of(model: Any) -> list[Any]:
    """The member models of an ensemble, in order."""
    import keras

    return [la for la in model.layers if isinstance(la, keras.Model)
            and la.name.startswith(PREFIX)]


def build(members: list[Any], names: list[str] | None = None) -> Any:
    """The members averaged, as one functional model (PipelineError for members that do not
    fit together, named by `names`, default their model names). Members are renamed
    ``member_<i>`` (layer names must be unique in a model); their weights are shared, not
    copied."""
    import keras

    check_compatible(list(zip(names or [m.name for m in members], members, strict=True)))
    for i, member in enumerate(members, 1):
        member.name = f"{PREFIX}{i}"
    xray = keras.Input(tuple(members[0].input_shape[1:]), dtype="float32", name="xray")
    mean = keras.layers.Average(name=OUTPUT, dtype="float32")([m(xray) for m in members])
    return keras.Model(xray, mean, name=f"ensemble_of_{len(members)}")


def check_compatible(named: list[tuple[str, Any]]) -> None:
    """Members must take the same gray image size and give the same outputs (the same task)."""
    if len(named) < 2:
        raise PipelineError(f"an ensemble needs at least 2 models, got {len(named)}. Give the "
                            "seeds' model files (models/model.keras of each run).")
    first_name, first = named[0]
    for name, model in named[1:]:
        if tuple(model.input_shape) != tuple(first.input_shape):
            raise PipelineError(
                f"{name} takes input {model.input_shape}, {first_name} {first.input_shape}: "
                "members must be trained at the same image size (params.yaml data.image_size).")
        if tuple(model.output_shape) != tuple(first.output_shape):
            raise PipelineError(
                f"{name} gives outputs {model.output_shape}, {first_name} {first.output_shape}: "
                "members must be trained for the same task (params.yaml task).")


def resolve(specs: list[str]) -> list[Member]:
    """Each member's Keras file (downloaded for runs:/ and models:/ URIs); the same bytes twice
    are refused (an ensemble of one model twice is that model)."""
    members, seen = [], {}
    for spec in specs:
        keras_file = loading.keras_file_of(spec, prefix="")
        digest = sha256_file(keras_file)
        if digest in seen:
            raise PipelineError(f"{spec} and {seen[digest]} are the same model (sha256 "
                                f"{digest[:12]}): give each seed's model once.")
        seen[digest] = spec
        members.append(Member(spec, keras_file, digest))
    return members


def save(specs: list[str], out: Path, replace: bool = False) -> dict[str, Any]:
    """Build the ensemble of `specs` and save it to `out` (a .keras file), its record beside it
    (`out` with .json: the members as given with their sha256, the file's sha256); existing
    files are overwritten only with `replace`. Returns the record."""
    if out.suffix != ".keras":
        raise PipelineError(f"--out {out}: give a file name ending in .keras.")
    record_file = out.with_suffix(".json")
    for path in (out, record_file):
        if path.exists() and not replace:
            raise PipelineError(f"{path} exists; pass --replace to overwrite it (and "
                                f"{record_file.name}), or give --out another file name.")
    members = resolve(specs)
    if out.exists() and any(out.resolve() == m.keras_file.resolve() for m in members):
        raise PipelineError(f"--out {out} is one of the members: give another file name.")
    models = []
    for member in members:
        models.append(loading._load_keras_file(member.keras_file))
        if is_ensemble(models[-1]):
            raise PipelineError(f"{member.spec} is already an ensemble: give its members.")
    ensemble = build(models, [m.spec for m in members])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.keras")
    ensemble.save(tmp)
    tmp.replace(out)
    record = {"out": str(out), "sha256": sha256_file(out),
              "members": [{"model": m.spec, "sha256": m.sha256} for m in members],
              "input_shape": list(ensemble.input_shape[1:]),
              "outputs": int(ensemble.output_shape[-1]), "record": str(record_file)}
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    return record


def embedding(model: Any) -> Any:
    """For `site check`: the members' penultimate features (each the input of its `pneumonia`
    head) side by side, as one model of the ensemble's input."""
    import keras

    xray = keras.Input(tuple(model.input_shape[1:]), dtype="float32", name="xray")
    parts = [keras.Model(m.inputs, m.get_layer("pneumonia").input)(xray)
             for m in members_of(model)]
    return keras.Model(xray, keras.layers.Concatenate(name="members_features")(parts))


class Cam:
    """Grad-CAM of an ensemble: each member's heatmap (pneumonia.inference.gradcam.CamModel,
    scaled to a peak of 1) averaged, scaled to a peak of 1 again, and the ensemble's
    P(PNEUMONIA). Where the members agree the map stays bright; where one member alone looked,
    it is dimmed by the number of members. Used by `pneumonia explain`; evaluate never sees an
    ensemble (it evaluates the trained model)."""

    def __init__(self, model: Any) -> None:
        from pneumonia.inference.gradcam import CamModel

        self.members = [CamModel(m) for m in members_of(model)]
        self.softmax_head = self.members[0].softmax_head

    def __call__(self, x: Any, target: int | str | None = None) -> tuple[Any, Any]:
        import numpy as np

        outs = [member(x, target) for member in self.members]
        cam = np.mean([c for c, _ in outs], axis=0)
        peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        cam = np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0.0)
        return cam.astype(np.float32), np.mean([p for _, p in outs], axis=0)


def cam_model(model: Any) -> Any:
    """The Grad-CAM of `model`: `Cam` for an ensemble, else gradcam.CamModel."""
    from pneumonia.inference.gradcam import CamModel

    return Cam(model) if is_ensemble(model) else CamModel(model)
