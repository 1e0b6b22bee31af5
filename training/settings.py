"""YAML recipes and KEY=VALUE overrides into frozen dataclasses, for any dataclass type.

Training recipes (`training.config.TrainConfig`) and release recipes
(`bielik_quant.release.config.ReleaseConfig`) are read by this one loader, so both refuse an
unknown key the same way (with a did-you-mean and the valid names), parse values by the field's
type hint (YAML gives ints where a float is meant and lists where a tuple is), and take overrides
from the command line the same way: `lr=1e-4`, or `export.n_ctx=256` for a nested section.

Supported field types: bool, int, float, str, `X | None`, tuple[X, ...], tuple[X, Y], dict[str, X],
Any, and nested dataclasses (a YAML mapping), also inside tuples. The dataclass's own
`__post_init__` checks the values once they are all in place.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or an override names an unknown field or gives a value that cannot be used."""


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping a recipe file holds; bad YAML or another shape is one ConfigError."""
    import yaml

    try:
        values = yaml.safe_load(path.read_text("utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of field: value")
    return values


def find_recipe(recipe: str | Path, built_in: Path, kind: str) -> Path:
    """A YAML path as given, or the name of a built-in recipe in the folder `built_in`."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        return path
    named = built_in / f"{recipe}.yaml"
    if not named.is_file():
        known = ", ".join(sorted(p.stem for p in built_in.glob("*.yaml"))) or "none"
        raise ConfigError(f"unknown {kind} {str(recipe)!r}; built-in recipes: {known}")
    return named


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["lr=1e-4", "export.n_ctx=256"]` → {"lr": 1e-4, "export": {"n_ctx": 256}} (YAML values)."""
    import yaml

    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({err})") from err
        *parents, leaf = key.strip().split(".")
        target = values
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        target[leaf] = value
    return values


def typed(cls: type, values: dict[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """`values` checked against `cls`'s fields and parsed by their types.

    Nested dataclasses stay mappings (parsed too), so the results of several sources (the recipe,
    then the command line) can be merged with `merge` before `construct` builds the object.
    """
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the recipe'} must be a mapping")
    changes = {}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {prefix}{close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{source}: unknown field {prefix}{key!r}{hint}; valid fields: {', '.join(known)}"
            )
        changes[key] = coerce(f"{prefix}{key}", value, hints[key], source)
    return changes


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` laid over `base`; mappings (sections, and mapping fields such as a training
    stage's `overrides`) merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def construct(cls: type[T], values: dict[str, Any]) -> T:
    """Build `cls` from typed values, nested sections included; `__post_init__` checks them."""
    hints = typing.get_type_hints(cls)
    kwargs = {key: _build(hints[key], value) for key, value in values.items()}
    return cls(**kwargs)


def load(cls: type[T], recipe: Path, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """A recipe file with KEY=VALUE overrides applied, as one checked `cls`."""
    values = typed(cls, read_yaml(recipe), source=str(recipe))
    values = merge(values, typed(cls, parse_overrides(overrides), source="the command line"))
    return construct(cls, values)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass in `hint` or `hint | None`."""
    if dataclasses.is_dataclass(hint):
        return hint
    if _is_optional(hint):
        return _dataclass_in(_without_none(hint))
    return None


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(hint)
    )


def _without_none(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007


def _build(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if _is_optional(hint):
        hint = _without_none(hint)
    if dataclasses.is_dataclass(hint):
        return construct(hint, value)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(_build(t, v) for t, v in zip(item_types, value, strict=True))
    return value


def coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """`value` as the field's type: YAML gives ints for floats and lists for tuples."""
    if hint is Any:
        return value
    if _is_optional(hint):
        return None if value is None else coerce(key, value, _without_none(hint), source)
    origin = typing.get_origin(hint)
    wrong = ConfigError(f"{source}: {key} must be {_describe(hint)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise wrong
        return typed(hint, value, source, prefix=f"{key}.")
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise wrong from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        return float(value)
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise wrong
        return str(value)
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        args = typing.get_args(hint)
        item_types = [args[0]] * len(items) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(items):
            raise wrong
        return tuple(
            coerce(f"{key}[{i}]", v, t, source)
            for i, (v, t) in enumerate(zip(items, item_types, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong
        _, value_type = typing.get_args(hint)
        return {str(k): coerce(key, v, value_type, source) for k, v in value.items()}
    raise TypeError(f"field {key} has a type the loader cannot parse: {hint}")  # our bug


def _describe(hint: Any) -> str:
    if dataclasses.is_dataclass(hint):
        return "a mapping of its fields"
    if isinstance(hint, type):
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false"}[
            hint.__name__
        ]
    if typing.get_origin(hint) is tuple:
        return "a list"
    if typing.get_origin(hint) is dict:
        return "a mapping"
    return str(hint)
