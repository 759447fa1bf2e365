"""One error family, so the CLI prints one readable line per problem saying *where*
(file and line, or dotted config key): a user needs the place, not a traceback."""

from __future__ import annotations


class RefinegError(Exception):
    """Base of every error the CLI reports as one line (exit code ``exit_code``)."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(RefinegError):
    """A config file that does not parse or validate."""


class DataError(RefinegError):
    """Malformed input data: a bad line, box, label or file."""


class PluginError(RefinegError):
    """A plugin that is unknown, fails to import, or has bad options."""


class BackendError(RefinegError):
    """An MLLM call that failed; ``retryable`` says whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool = False, where: str | None = None):
        self.retryable = retryable
        super().__init__(message, where=where)


class SampleImageError(BackendError):
    """An unreadable sample image: the sample's own ``image`` failure, never retried
    and never held against the backend."""

    kind = "image"

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(message, retryable=False, where=where)


class BackendUnavailable(BackendError):
    """The backend cannot be reached at all (no server, no weights): skip, don't retry."""


class TaggerError(RefinegError):
    """Training or loading a tagger failed (missing files, NaN loss, label mismatch)."""


class StageUnavailable(RefinegError):
    """A stage set to ``true`` cannot run or did not succeed: its backend is
    unreachable, misconfigured or failed every call, or some sample failed for a
    reason that is not its own (``refineg_core.pipeline.verdict``). Set the stage
    to ``"auto"`` to skip it or go on with a note instead."""

    exit_code = 3
