"""The one error type the CLI boundary turns into a message and an exit code."""

from __future__ import annotations


class StackError(Exception):
    """A failure the user can act on: what went wrong, and how to fix it.

    exit_code 2 means bad input (a stack file, an argument); 1 means the platform failed.
    """

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"
