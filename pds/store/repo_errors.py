"""What the repository refuses: the errors of `repo.py` (re-exported there) and
`repo_read.py`."""

from __future__ import annotations


class RepoError(Exception):
    """A write (or read) the repository refuses."""


class RecordExists(RepoError):
    """A create of a record that is already there."""


class RecordNotFound(RepoError):
    """An update or delete of a record that isn't there."""


class InvalidSwap(RepoError):
    """The commit or record is not at the CID the write expected."""


class RepoNotFound(RepoError):
    """No repository (no HEAD) for the account."""


class CorruptRepo(RepoError):
    """The repository's own files are unreadable."""
