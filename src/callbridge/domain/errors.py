"""The root of callbridge's errors.

Every error callbridge raises on purpose descends from :class:`CallbridgeError`. Each
package adds its branch, grouped by what the caller should do about it::

    CallbridgeError
    ├── ConfigurationError          settings are invalid; the message names the variable
    ├── StorageError                the database refused or is unreachable (storage/)
    │   └── MigrationsPendingError  the schema is not at the head revision
    └── JobError                    job queue and worker (storage/job_queue.py, worker/)
        ├── UnknownJobKindError     no handler registered for a job's kind
        └── JobNotFoundError        no job with that id

The web layer maps these to status-coded JSON in one handler; the CLI prints the message and
exits non-zero.
"""

from __future__ import annotations


class CallbridgeError(Exception):
    """Something callbridge cannot do; the message says what and how to fix it."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self.args[0])


class ConfigurationError(CallbridgeError):
    """The settings are invalid."""


class StorageError(CallbridgeError):
    """The database refused the operation or cannot be reached."""


class MigrationsPendingError(StorageError):
    """The database schema is not at the latest revision; run `callbridge migrate`."""


class JobError(CallbridgeError):
    """A job could not be queued, found or run."""


class UnknownJobKindError(JobError):
    """No handler is registered for this job kind."""


class JobNotFoundError(JobError):
    """No job has this id."""
