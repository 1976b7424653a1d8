"""Typed errors a user can act on. The CLI (and later the API) map them to output in one place each."""
from __future__ import annotations


class KilnError(Exception):
    """Base of every error Kiln reports to a user instead of a backtrace."""

    def describe(self) -> str:
        return str(self)


class ValidationError(KilnError):
    """A request field is malformed or names something Kiln cannot honour."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CompilationError(KilnError):
    """A pipeline stage failed; `hint` says what the user should change."""

    def __init__(self, stage: str, message: str, hint: str = "") -> None:
        self.stage = stage
        self.message = message
        self.hint = hint
        super().__init__(f"{stage}: {self.with_fix}")

    @property
    def with_fix(self) -> str:
        """The message and, where there is one, what to change: what a user reads."""
        return self.message + (f" Fix: {self.hint}" if self.hint else "")


def failure_reason(exc: KilnError) -> str:
    """A FailureReason in Neo's style: ClientError for what the user must change, naming the stage and the fix."""
    if isinstance(exc, ValidationError):
        return f"ClientError: {exc.field}: {exc.message}"
    if isinstance(exc, CompilationError):
        return f"ClientError: {exc.stage}: {exc.with_fix}"
    return f"ClientError: {exc}"
