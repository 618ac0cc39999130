"""Argument checks shared by the public entry points: each names the parameter, the value
and what is allowed, and raises ``TypeError``/``ValueError`` (never ``assert``)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; bools, floats and strings are refused."""
    allowed = _range_text(low, high)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{allowed}, got {value!r} "
                        f"({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer{allowed}, got {value}")
    return value


def check_float(name: str, value: Any, *, low: float | None = None,
                high: float | None = None) -> float:
    """``value`` as a finite float in [low, high]."""
    allowed = _range_text(low, high)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{allowed}, got {value!r} "
                        f"({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or (low is not None and value < low) or (
        high is not None and value > high
    ):
        raise ValueError(f"{name} must be a finite number{allowed}, got {value}")
    return value


def check_eta(eta: Any) -> float:
    """η must be a finite float >= 0 (η=0: deterministic DDIM, η=1: DDPM-like)."""
    return check_float("eta", eta, low=0.0)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""
