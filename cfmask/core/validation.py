"""Checks for numeric arguments, with messages that name the argument.

Every numeric hyper-parameter of the fine-tuner, the losses and the maskers goes
through :func:`check_number` once, when it is given: strings, booleans, ``nan``
and infinities are refused with the argument's name, so none of them reaches an
optimiser step.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ("check_number",)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> float:
    """Return ``value`` as a float after checking that it is a finite number in range.

    Args:
        name: Argument name used in the messages (e.g. ``"lr"``).
        value: The value to check.
        low: Smallest allowed value (``None``: unbounded).
        high: Largest allowed value (``None``: unbounded).
        low_open: Exclude ``low`` itself.
        high_open: Exclude ``high`` itself.
        integer: Require an integer.

    Returns:
        ``float(value)``.

    Raises:
        TypeError: ``value`` is not a real number (a string, a bool, ``None``, …), or
            not an integer when ``integer`` is set.
        ValueError: ``value`` is ``nan``, infinite or out of range.

    Example:
        >>> check_number("lr", 3e-5, low=0, low_open=True)
        3e-05
        >>> check_number("lr", float("nan"), low=0, low_open=True)
        Traceback (most recent call last):
            ...
        ValueError: lr must be a finite number, got nan
    """
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be {kind}, got {value!r} ({type(value).__name__}); "
            "write it without quotes in YAML or Python"
        )
    if integer and not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value}")
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if below or above:
        raise ValueError(f"{name} must be {_describe(low, high, low_open, high_open)}, got {value}")
    return number


def _describe(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"in {left}{low:g}, {high:g}{right}"
