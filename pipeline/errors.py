"""Errors of the offline stages; all are `TcdError`s, so the CLI reports them in one line."""

from cache.errors import TcdError


class DatasetError(TcdError):
    """An annotation file or dataset folder is missing or malformed."""


class VideoError(TcdError):
    """A video cannot be opened or decoded."""


class UpstreamError(TcdError):
    """A stage's input is missing (the stage before it has not run) or failed for a row."""
