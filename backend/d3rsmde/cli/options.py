"""Argument types shared by the commands: comma-separated numbers, as ``4,3,2`` or ``0,1,3,6``."""

from __future__ import annotations

import argparse


def _numbers(kind: type, text: str) -> list:
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None


def ints(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``."""
    return _numbers(int, text)


def floats(text: str) -> list[float]:
    """``"-105.9,40.2,-105.5,40.5"`` -> four floats."""
    return _numbers(float, text)
