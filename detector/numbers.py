"""What counts as a number wherever whale-listen reads one (config values, event logs, tables).

One rule, so that the config check, the Raven export and the training tables agree: a real int or
float, never a bool (JSON and TOML `true` is an int to Python), and finite (TOML and JSON parsers
accept nan and inf, and nan passes every bound since comparisons with it are false).
"""

import math


def is_finite_number(value: object) -> bool:
    """A finite int or float, not a bool."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def number(
    value: object,
    kind: type = float,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> float | int:
    """`value` as `kind` within [lo, hi] (lo excluded when `lo_open`); ValueError saying why not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    if not is_finite_number(value):
        raise ValueError(f"expected a finite number, got {value}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"must be <= {hi}, got {value}")
    return kind(value)
