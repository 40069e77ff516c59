"""How a setting is refused: the one error type of every config check, and the check of a value's type.

``check_type`` is the type rule of every field, in the task spec (``data_gen.spec.validate``) and in the run config
(``iclwl.config.from_dict``) alike.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable
from typing import Any, Literal


class ConfigError(ValueError):
    """A setting that cannot work, refused before anything is traced.

    The message always names the field, the value it got and the rule it broke, e.g.
    ``task.L_relevant = 9: must be at most task.L (8)``.
    """

    def __init__(self, field: str, value: object, rule: str):
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"{field} = {value!r}: {rule}")


def check_type(path: str, value: Any, tp: Any, build: Callable[[str, type, Any], Any] | None = None) -> Any:
    """``value`` checked against the annotation ``tp``, lists made tuples and integers made floats where a float is
    asked; a ``ConfigError`` naming ``path`` otherwise. ``build(path, cls, value)`` makes a nested dataclass."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return check_type(path, value, inner, build)
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, value, f"must be one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(path, value, "must be a list")
        return tuple(check_type(f"{path}[{i}]", v, args[0], build) for i, v in enumerate(value))
    if tp is Any:
        return tuple(value) if isinstance(value, list) else value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(path, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(path, value, "must be a number")
        if not math.isfinite(value):
            raise ConfigError(path, value, "must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "must be a string")
        return value
    if dataclasses.is_dataclass(tp) and build is not None:
        return build(path, tp, value)
    raise TypeError(f"{path}: unsupported annotation {tp}")  # a bug in the schema, not in the user's config
