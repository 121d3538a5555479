"""User-facing errors: one line plus a hint, exit code 2 (bugs keep their traceback, exit 1)."""

from __future__ import annotations


class SlmError(Exception):
    """A mistake the user can fix: bad input, a typo in config, a missing file."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message
