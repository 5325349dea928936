"""The one progress/cancel protocol of every long job (raster prediction, dataset builds, downloads, training):
``progress(fraction, message)`` with fraction in [0, 1], and ``cancel() -> bool`` polled between units of work.
The QGIS plugin maps them onto ``QgsProcessingFeedback``, the CLI onto terminal lines.
"""

from __future__ import annotations

from typing import Callable

from .errors import Cancelled

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]


def report(progress: Progress | None, fraction: float, message: str) -> None:
    """``progress(fraction, message)`` when there is a callback."""
    if progress is not None:
        progress(fraction, message)


def check_cancel(cancel: Cancel | None, what: str = "", *, message: str = "") -> None:
    """Raise :class:`Cancelled` when ``cancel()`` says so, with ``message`` ("<what> cancelled" when not given)."""
    if cancel is not None and cancel():
        raise Cancelled(message or f"{what} cancelled")


def scaled_progress(progress: Progress | None, start: float, end: float) -> Progress | None:
    """A callback reporting into the ``[start, end]`` part of ``progress`` (stages of a longer job)."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * min(max(fraction, 0.0), 1.0), message)


def terminal_progress(step: float = 0.01) -> Progress:
    """A callback for the terminal: one line whenever the fraction has moved by ``step``, and every message at 0 %
    (downloads announce themselves there) and 100 %."""
    next_at = 0.0

    def progress(fraction: float, message: str) -> None:
        nonlocal next_at
        if fraction in (0.0, 1.0) or fraction >= next_at:
            print(f"[{fraction:4.0%}] {message}", flush=True)
            next_at = fraction + step

    return progress
