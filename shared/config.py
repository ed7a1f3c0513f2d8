"""Typed component configuration loaded from defaults, a TOML file, the environment and
CLI flags, in that order of precedence (later wins).

Each component declares one dataclass whose fields carry their help text in
``metadata["help"]``; CLI flags are generated from the fields. Environment variables are
``TANDEM_<COMPONENT>_<FIELD>`` (e.g. ``TANDEM_CLOUD_PORT=6000``) and are read only when a
config is loaded, never at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A documented config field."""
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_value(kind: Any, raw: Any) -> Any:
    """Convert a string (env/CLI) or TOML value to the field's declared type."""
    origin = typing.get_origin(kind)
    if origin is typing.Union or str(origin) == "types.UnionType":
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("", "none")):
            return None
        return _parse_value(inner[0], raw)
    if origin in (list, tuple):
        (item,) = typing.get_args(kind)[:1]
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        return [_parse_value(item, x) for x in items if x != ""]
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        lowered = str(raw).strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if kind in (int, float, str):
        return kind(raw)
    return raw


def load_config(
    cls: type[C],
    component: str,
    *,
    file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """Build ``cls`` from defaults < TOML file section ``[component]`` < env < overrides."""
    env = os.environ if env is None else env
    types = _field_types(cls)
    values: dict[str, Any] = {}
    if file:
        with open(file, "rb") as fh:
            section = tomllib.load(fh).get(component, {})
        unknown = set(section) - set(types)
        if unknown:
            raise ValueError(f"{file}: unknown [{component}] keys: {sorted(unknown)}")
        values.update({k: _parse_value(types[k], v) for k, v in section.items()})
    prefix = f"TANDEM_{component.upper()}_"
    for name in types:
        raw = env.get(prefix + name.upper())
        if raw is not None:
            values[name] = _parse_value(types[name], raw)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return cls(**values)


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--field-name`` flag per dataclass field (default None = not given)."""
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if types[f.name] is bool:
            parser.add_argument(
                flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                help=f"{help_text} (default: {default})")
        else:
            parser.add_argument(
                flag, dest=f.name, default=None,
                type=lambda raw, kind=types[f.name]: _parse_value(kind, raw),
                help=f"{help_text} (default: {default})")


def config_from_args(cls: type[C], component: str, args: argparse.Namespace) -> C:
    """Load ``cls`` using ``--config FILE`` and the generated flags in ``args``."""
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return load_config(cls, component, file=getattr(args, "config", None), overrides=overrides)
