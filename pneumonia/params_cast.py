"""The caster behind pneumonia.params: a YAML mapping into a frozen dataclass, each value cast to
its declared type (DVC's `-S lr=2e-6` comes back as the string '2e-06'), each field's `check`
rule applied, and every mistake one `ParamsError` naming the key and how to fix it. Hand-written
(not pydantic): its messages are the contract of tests/test_params.py; the schema it reads is
pneumonia.params.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from pneumonia.errors import PipelineError


class ParamsError(PipelineError):
    """A key of params.yaml is missing, unknown, of the wrong type or out of range."""


def fix_hint(key: str, example: Any) -> str:
    return f"Fix it in params.yaml, or override it with `dvc exp run -S {key}={example}`."


def cast_value(value: Any, tp: Any, key: str) -> Any:
    """Cast a YAML value to the declared type `tp`, or raise ParamsError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        # YAML reads `none`/`off`/`on` unquoted as strings or booleans depending on the spelling.
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed):
            value = {True: "on", False: "off"}[value]
        if isinstance(value, str):
            value = value.strip().lower()
        if value not in allowed:
            raise ParamsError(
                f"params.yaml: `{key}` is {value!r}; it must be one of {', '.join(map(str, allowed))}. "
                + fix_hint(key, allowed[0])
            )
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
            return value.strip().lower() in ("true", "yes")
        raise ParamsError(
            f"params.yaml: `{key}` is {value!r}; it must be true or false. " + fix_hint(key, "true")
        )
    if tp is int:
        if isinstance(value, bool):
            raise ParamsError(f"params.yaml: `{key}` is {value!r}; it must be a whole number.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ParamsError(
            f"params.yaml: `{key}` is {value!r}; it must be a whole number. " + fix_hint(key, 1)
        )
    if tp is float:
        # DVC writes `-S lr=2e-6` back as `lr: 2e-06`, which YAML 1.1 (PyYAML) reads as a string.
        if isinstance(value, bool):
            raise ParamsError(f"params.yaml: `{key}` is {value!r}; it must be a number.")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ParamsError(
            f"params.yaml: `{key}` is {value!r}; it must be a number. " + fix_hint(key, "0.1")
        )
    if tp is str:
        if value is None:
            raise ParamsError(f"params.yaml: `{key}` is empty; it needs a value.")
        return str(value)
    if origin is tuple:  # tuple[X, ...]: a YAML list (or one value) of X
        (item,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items:
            raise ParamsError(f"params.yaml: `{key}` is an empty list; give at least one value.")
        return tuple(cast_value(v, item, f"{key}[{i}]") for i, v in enumerate(items))
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    raise TypeError(f"unsupported parameter type {tp!r} for {key}")  # programming error


def build_dataclass(cls: type, raw: Any, prefix: str = "") -> Any:
    where = f"`{prefix}`" if prefix else "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {where} must be a mapping of keys, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        dotted = [f"`{prefix}.{k}`" if prefix else f"`{k}`" for k in unknown]
        known = ", ".join(f"{prefix}.{k}" if prefix else k for k in fields)
        raise ParamsError(
            f"params.yaml: unknown key(s) {', '.join(dotted)} in {where}. "
            f"Known keys: {known}. Check the spelling."
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamsError(f"params.yaml: required key `{key}` is missing. Add it to params.yaml.")
            continue
        value = cast_value(raw[name], hints[name], key)
        check = f.metadata.get("check")
        if check and not check[0](value):
            raise ParamsError(
                f"params.yaml: `{key}` is {raw[name]!r}; it {check[1]}. "
                + fix_hint(key, f.default if f.default is not dataclasses.MISSING else "...")
            )
        kwargs[name] = value
    return cls(**kwargs)
