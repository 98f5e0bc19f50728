"""The lab's one configuration error and the one helper that raises it.

A leaf module (it imports nothing of the project) so that every part's configuration
dataclass (``agent.config``, ``chain.config``, ``contracts.config``, ``scenario.config``) can
raise the same :class:`ConfigError`, and the command line catches one type.
"""
from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A scenario value is missing, unknown, out of range or inconsistent with another one.

    The message names the field with its dotted path (``chain.genesis_difficulty``), and both
    fields where two parts of a scenario disagree.
    """


def require(ok: bool, field: str, what: str, value: Any) -> None:
    """Raise :class:`ConfigError` ``"<field> must be <what>, got <value>"`` unless ``ok``.

    ``field`` is the dotted name (``"chain.n_nodes"``); ``what`` completes "must be ...".
    """
    if not ok:
        raise ConfigError(f"{field} must be {what}, got {value!r}")


def is_int(value: Any) -> bool:
    """An integer that is not a bool (TOML gives both)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)
