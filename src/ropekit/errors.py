"""One exception type for every mistake a user can make.

Every :class:`RopekitError` carries a single line that names the problem and the fix. The CLI prints that line
and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class RopekitError(ValueError):
    """A user-facing error: ``str(err)`` is one line saying what is wrong and how to fix it."""

    def __init__(self, problem: str, fix: str | None = None):
        message = problem.rstrip(".")
        if fix:
            message += f". Fix: {fix.rstrip('.')}."
        else:
            message += "."
        super().__init__(message)
