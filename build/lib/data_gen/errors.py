"""The one error type that every config check raises."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work, refused before anything is traced.

    The message always names the field, the value it got and the rule it broke, e.g.
    ``task.L_relevant = 9: must be at most task.L (8)``.
    """

    def __init__(self, field: str, value: object, rule: str):
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"{field} = {value!r}: {rule}")
