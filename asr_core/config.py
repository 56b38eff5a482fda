"""Dataclass configs built from plain dicts, rejecting unknown keys and bad types by name."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, TypeVar

from asr_core.errors import InputError

T = TypeVar("T")


def _coerce(value: Any, tp: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InputError(where, f"key '{key}': expected a list, got {value!r}", key=key)
        (inner, *_rest) = typing.get_args(tp) or (Any,)
        return origin(_coerce(v, inner, where, key) for v in value)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise InputError(where, f"key '{key}': {value!r} is not one of {list(allowed)}", key=key)
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(where, f"key '{key}': expected true/false, got {value!r}", key=key)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise InputError(where, f"key '{key}': expected an integer, got {value!r}", key=key)
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise InputError(where, f"key '{key}': expected a number, got {value!r}", key=key)
        try:
            return float(value)  # YAML reads "1e-3" as a string
        except (TypeError, ValueError):
            raise InputError(where, f"key '{key}': expected a number, got {value!r}", key=key) from None
    if tp is str:
        if not isinstance(value, str):
            raise InputError(where, f"key '{key}': expected a string, got {value!r}", key=key)
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "<config>") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values are errors naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(where, f"unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(names)}",
                         key=unknown[0])
    kwargs = {k: _coerce(v, hints[k], where, k) for k, v in data.items()}
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            if isinstance(e, InputError):
                raise
            raise InputError(where, str(e), key=getattr(e, "key", None)) from None
    return obj


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)
