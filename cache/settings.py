"""Settings are dataclasses, loaded from TOML and overridden with `--set a.b=c`.

    settings = load_settings(PipelineSettings, "configs/pipeline.toml", ["captions.xi=0.5"])

Unknown keys and wrong types are errors (a typo must not silently fall back to a default).
Values given with `--set` are parsed as TOML values (`0.5`, `true`, `"x"`, `[1, 2]`); anything
that does not parse as TOML is taken as a plain string (`--set encode.text_model=minilm`).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from cache.errors import SettingsError

T = TypeVar("T")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`"a.b=0.5"` -> (["a", "b"], 0.5). A value that is not TOML is the text as given: with
    its spaces (`captions.separator= | `, the shell having dropped the quotes of `=" | "`),
    unless spaces stand on both sides of the `=` (`"ocr.engine = kwai"`)."""
    if "=" not in item:
        raise SettingsError(
            f"override {item!r} is not of the form key=value (e.g. captions.xi=0.5)"
        )
    dotted, raw = item.split("=", 1)
    keys = [k.strip() for k in dotted.strip().split(".")]
    if not all(keys):
        raise SettingsError(f"override {item!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        spaced = dotted != dotted.rstrip() and raw != raw.lstrip()
        value = raw.strip() if spaced else raw
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of nested dict `data` with each `a.b=c` override applied."""
    out = _deep_copy(data)
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise SettingsError(f"override {item!r}: {key!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return out


def read_toml(path: str | Path, what: str = "settings file") -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a `SettingsError` naming it."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"{path}: {what} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc})") from None


def load_settings(
    cls: type[T],
    layers: str | Path | Sequence[str | Path | None] | None = None,
    overrides: Sequence[str] = (),
    section: str | None = None,
    base: dict[str, Any] | None = None,
) -> T:
    """Build dataclass `cls` from TOML layers (later wins; `None` layers are skipped), then
    `--set` overrides. `section` takes one `[section]` of each file. `base` is a table under
    all layers: a work dir's saved settings, read as the version that wrote them ran
    (`cache.keys.as_written_before`).

    The project's one settings loader: a run config is one file, the pipeline's settings are
    the work dir's saved file under `--config` (`pipeline.settings.resolve_settings`).
    """
    if layers is None or isinstance(layers, (str, Path)):
        layers = [layers]
    data: dict[str, Any] = dict(base or {})
    for path in layers:
        if path is None:
            continue
        layer = read_toml(path)
        if section is not None:
            layer = layer.get(section, {})
        data = _merge(data, layer)
    return from_dict(cls, apply_overrides(data, overrides))


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Recursively convert a nested dict into dataclass `cls`, checking names and types."""
    if not isinstance(data, dict):
        raise SettingsError(f"{where or 'settings'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise SettingsError(
            f"unknown setting {where + unknown[0]!r}; known: {', '.join(sorted(names))}"
        )
    kwargs = {name: _coerce(hints[name], value, where + name) for name, value in data.items()}
    return cls(**kwargs)


def to_dict(settings: Any) -> dict[str, Any]:
    """Dataclass -> nested dict (TOML-serialisable types only)."""
    return dataclasses.asdict(settings)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except SettingsError as exc:
                errors.append(str(exc))
        raise SettingsError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise SettingsError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where}: expected a list, got {value!r}")
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        items = [_coerce(item_hint, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise SettingsError(f"{where}: expected true or false, got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise SettingsError(f"{where}: expected a number, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise SettingsError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def dump_toml(data: dict[str, Any]) -> str:
    """Nested dict of scalars, lists and tables -> TOML text (tomli-w)."""
    return tomli_w.dumps(_no_null(data))


def _no_null(data: Any) -> Any:
    if data is None:
        raise SettingsError("TOML has no null; use an empty string or leave the key out")
    if isinstance(data, dict):
        return {k: _no_null(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_no_null(v) for v in data]
    return data


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def check_setting(where: str, ok: bool, rule: str, value: Any) -> None:
    """A range check for a settings dataclass's `__post_init__`: unless `ok`, raise
    `SettingsError("<where> must be <rule>, got <value>")`."""
    if not ok:
        raise SettingsError(f"{where} must be {rule}, got {value!r}")
