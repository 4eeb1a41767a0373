"""Error types. Every error a user can cause is an AnomalyError with a one-line message."""

from __future__ import annotations


class AnomalyError(Exception):
    """Root of every error `anomaly` raises on purpose. The CLI prints it as one line and exits 2."""


class ConfigError(AnomalyError, ValueError):
    """A pipeline file, option, environment variable or settings object is invalid (also a ValueError, so
    library users constructing settings can catch the usual type)."""

    def __init__(self, message: str, *, key: str | None = None, related: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.key = key
        self.related = related  # the other settings a check between settings compared `key` with


class BundleError(AnomalyError):
    """A model bundle cannot be read (missing, truncated, corrupted or from an incompatible version) or written."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class SchemaError(AnomalyError):
    """Data does not match what the model expects (missing or extra features, bad columns)."""

    def __init__(self, message: str, *, missing: list[str] | None = None, extra: list[str] | None = None):
        super().__init__(message)
        self.missing = list(missing or [])
        self.extra = list(extra or [])


class DataError(AnomalyError):
    """Input data cannot be read or is empty."""


class OutputError(AnomalyError):
    """A result file cannot be written (missing or read-only folder, a directory in the way, disk full)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def extra_hint(extra: str) -> str:
    """How to install one of the project's optional extras, for messages. The distribution is not on PyPI
    (`pip install 'anomaly[export]'` would look there for another project's package): it installs from the
    checkout, with torch pinned to the CPU build as `make venv` does."""
    return f"pip install -c deploy/constraints.txt -e '.[{extra}]' in the anomaly checkout"
