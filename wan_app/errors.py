"""Errors a person can act on: one message that names the field, what is wrong, and the fix."""
from __future__ import annotations


class UserError(ValueError):
    """Bad input or a missing file, found before any heavy work starts."""

    def __init__(self, field: str, problem: str, fix: str = ""):
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem}" + (f" — {fix}" if fix else ""))


class Cancelled(Exception):
    """Raised from the step callback when the user pressed Stop; nothing half-done is decoded."""
