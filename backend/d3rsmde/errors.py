"""Errors the user can act on: each message names the problem and, where possible, the fix."""


class D3Error(Exception):
    """Base class of every error d3rsmde raises on purpose."""


class InputError(D3Error, ValueError):
    """A raster, band choice, path or parameter the user gave cannot be used as it is."""


class OutputError(D3Error):
    """An output could not be written completely (disk full, I/O error); any previous file there is kept."""


class CheckpointError(D3Error):
    """A weights file is missing, corrupt, truncated or does not match the code."""


class Cancelled(D3Error):
    """The user cancelled the run (a cancel callback returned True)."""
