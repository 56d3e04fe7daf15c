"""Errors a person can cause. Each carries one line that says what was wrong and where."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a refused action: shown as one line, exit status 2, nothing changed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(UserError):
    """The named mailing (or other object) does not exist."""


class RefusedTransition(UserError):
    """The lifecycle does not allow this action in the mailing's current state."""


class ImportRejected(UserError):
    """A recipient file has a structural error; nothing from it was imported."""


class NoValidRecipient(ImportRejected):
    """A recipient file was read to its end and adds nobody; `rejected` of its rows were invalid."""

    def __init__(self, message: str, rejected: int) -> None:
        super().__init__(message)
        self.rejected = rejected
