"""`UserError`: the one base of every error attnscope phrases for its user.

It lives at the bottom layer so kernels, models, analysis and app can all raise it. Its message is
one line that says what was wrong and what to do; the CLI prints it as `attnscope: error: ...`,
the app as one red box, and notebooks see it as a plain exception.
"""

from __future__ import annotations


class UserError(Exception):
    """An error already phrased for the user: one line, what was wrong and what to do."""


class VariantError(UserError, ValueError):
    """A variant name, parameter or target model that cannot be used; the message says why."""


def user_message(exc: BaseException) -> str | None:
    """The one line to show for an error phrased for the user (or running out of memory); None for a bug."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory; use a shorter input, or lower ATTNSCOPE_MEMORY_BUDGET_GB so the guard refuses it first"
    return None
