"""Errors a user sees: each carries one line that names the file or value and says what to do.

The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback; notebooks show the
same single line. Anything else is a bug in the package.
"""


class T2IError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class DatasetError(T2IError):
    """A data file is missing, unreadable or not in the expected (COCO captions) format."""


class AssetMissingError(T2IError):
    """A model, weight or data file is not available offline; the message says how to get it."""


class TrainingError(T2IError):
    """Training cannot go on (NaN loss, out of memory, a run folder that does not match)."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to ``limit`` characters (for messages that quote it)."""
    return " ".join(str(err).split())[:limit]
