"""Argument checks shared by every wing: each names the parameter, the value and what is
allowed, and raises ``TypeError``/``ValueError`` (never ``assert``); and the count wording
(``plural``) that the library's and the command's messages share."""

from __future__ import annotations

import importlib.util
import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any


def require_package(module: str, package: str, purpose: str) -> None:
    """Check that ``module`` can be imported, without importing it (cheap).

    Raises:
        ImportError: one line, "{purpose} needs {package}, which is not installed: pip install
            'ddim[eval]'" (the extra that holds the reference data's packages).
    """
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{purpose} needs {package}, which is not installed: "
                          "pip install 'ddim[eval]'")


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high]: a Python or numpy integer, or a 0-d integer
    tensor or array (anything with ``__index__``); bools, floats and strings are refused."""
    allowed = _range_text(low, high)
    try:
        if isinstance(value, bool) or getattr(value, "ndim", 0) != 0 or str(
                getattr(value, "dtype", "")) in ("bool", "torch.bool"):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer{allowed}, got {value!r} "
                        f"({type(value).__name__})") from None
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


def check_bool(name: str, value: Any) -> bool:
    """``value`` must be True or False (not 0/1, not None)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_device(name: str, value: Any) -> Any:
    """A ``torch.device`` for ``value`` (a device or a string such as ``"cuda:0"``), or None.

    Raises:
        TypeError: not a device, string or None. ValueError: an unknown device string, or a
            device type (cuda, mps) or index this machine does not have.
    """
    import torch

    if value is None:
        return None
    if not isinstance(value, (str, torch.device)):
        raise TypeError(f"{name} must be a torch.device or a string such as 'cpu' or 'cuda:0', "
                        f"got {value!r} ({type(value).__name__})")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name} must be a device such as 'cpu', 'cuda' or 'cuda:1', got "
                         f"{value!r}") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device.type in available and not available[device.type]():
        raise ValueError(f"{name}={str(value)!r}: {device.type} is not available on this "
                         "machine")
    if device.type == "cuda" and device.index is not None and (
            device.index >= torch.cuda.device_count()):
        raise ValueError(f"{name}={str(value)!r} does not exist: this machine has "
                         f"{torch.cuda.device_count()} CUDA devices")
    if device.type == "meta":
        raise ValueError(f"{name}='meta' holds no data: use 'cpu' or 'cuda'")
    return device


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``"1 image"``, ``"3 images"``: ``count`` and the noun in the number it needs
    (``nouns``: an irregular plural; default ``noun + "s"``)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
