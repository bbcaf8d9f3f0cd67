"""Argument types shared by the subcommands, so every command rejects bad numbers the same way."""

from __future__ import annotations

import argparse

__all__ = ["fraction", "non_negative_int", "positive_int", "unit_interval"]


def _whole(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None


def positive_int(raw: str) -> int:
    value = _whole(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(raw: str) -> int:
    value = _whole(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def fraction(raw: str) -> float:
    """A rate strictly between 0 and 1 (a target false-positive rate, a confidence)."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.01, got {raw!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {raw}")
    return value


def unit_interval(raw: str) -> float:
    """A score or share from 0 to 1, both ends included (a threshold, a share of prompts)."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.5, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {raw}")
    return value
