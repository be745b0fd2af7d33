"""Typed errors. `TcdError` is the project-wide base: library code raises subclasses of it and
the CLI turns any of them into one clear line and a non-zero exit. It lives here because
`cache` is the lowest layer, importable by every other package."""


class TcdError(Exception):
    """A user-facing error: the message alone should tell the user what to fix."""


class CacheError(TcdError):
    """The work directory is missing, damaged or used in a way it does not support."""


class LockBusy(CacheError):
    """Another process holds the writer lock of a stage group or of the manifest."""


class SettingsError(TcdError):
    """A settings file or a `--set` override is invalid."""
