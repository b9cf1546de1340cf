"""Errors users can act on. The CLI prints their message on one line (exit code 2) instead of a traceback."""


def some(names, shown: int = 5) -> str:
    """Up to `shown` names and how many more: a message about 1,000 portfolios stays one readable line."""
    names = [str(n) for n in names]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


class PipelineError(Exception):
    """Base class: the message says what was wrong, where, and what to do."""


class ConfigError(PipelineError):
    pass


class SourceError(PipelineError):
    """The market-data API refused or failed (unknown product, bad window, retries exhausted)."""


class ValidationError(PipelineError):
    """Input data broke a rule (reference files, payload rows); names the file/row/rule."""


class DataNotFoundError(PipelineError):
    """A stage needs data that an earlier stage has not produced (e.g. no bars for a conversion)."""


class IncompleteInputError(DataNotFoundError):
    """`report` or alerts refused: an input for the as-of day is missing, incomplete or stale (exit code 3)."""

    exit_code = 3
