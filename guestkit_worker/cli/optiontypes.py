"""Types of the values of flags and GUESTKIT_WORKER_* variables: each returns the value or raises
``argparse.ArgumentTypeError`` with one line saying what was expected and what came, which the
CLI turns into ``guestkit-worker: error: ...`` and exit status 2 (never a traceback)."""

import argparse
import re
from typing import Callable


def boolean(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def number(kind, text: str):
    """``kind(text)`` (int or float) or an error naming what was expected."""
    try:
        return kind(text)
    except ValueError:
        whole = "whole " if kind is int else ""
        raise argparse.ArgumentTypeError(f"expected a {whole}number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = number(float, text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = number(float, text)
    if not value >= 0:  # NaN included
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def choice(*values: str, upper: bool = False) -> Callable[[str], str]:
    """A type accepting one of ``values`` (case-insensitive; returned upper- or lower-case)."""
    expected = f"{', '.join(values[:-1])} or {values[-1]}" if len(values) > 1 else values[0]

    def parse(text: str) -> str:
        value = str(text).strip()
        value = value.upper() if upper else value.lower()
        if value not in values:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(text: str) -> int:
    """A byte count: a whole number, optionally followed by K, M, G or T (powers of 1024;
    ``KiB``/``KB`` spellings accepted), like 512M or 1G; 0 is allowed."""
    value = str(text).strip().upper()
    for tail in ("IB", "B"):
        if value.endswith(tail) and value[:-len(tail)][-1:] in "KMGT" and len(value) > len(tail):
            value = value[:-len(tail)]
            break
    unit = value[-1:] if value[-1:] in "KMGT" else ""
    digits = value[:-1] if unit else value
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"expected a size such as 104857600, 512M or 1G, got {text!r}")
    return int(digits) * _SIZE_UNITS[unit]


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> float:
    """Seconds from ``7d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds; 0 is allowed."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 7d, 12h, 90m, 3600 (seconds) or 0, "
                                         f"got {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
