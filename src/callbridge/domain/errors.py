"""The root of callbridge's errors.

Every error callbridge raises on purpose descends from :class:`CallbridgeError`. Each
package adds its branch, grouped by what the caller should do about it::

    CallbridgeError
    ├── ConfigurationError          settings are invalid; the message names the variable
    ├── StorageError                the database refused or is unreachable (storage/)
    │   └── MigrationsPendingError  the schema is not at the head revision
    ├── JobError                    job queue and worker (storage/job_queue.py, worker/)
    │   ├── UnknownJobKindError     no handler registered for a job's kind (also Permanent)
    │   ├── JobNotFoundError        no job with that id
    │   ├── JobStateError           the job's status does not allow this (e.g. retry a queued job)
    │   └── LeaseLostError          another worker holds the job now; this run's writes are dropped
    ├── Retryable                   transient: run the job again later, with backoff
    │   └── RetryLater              come back after ``retry_after`` s; does not spend an attempt
    ├── Permanent                   retrying cannot help: the job goes straight to ``dead``
    └── CallModelError              the call model cannot accept this input (domain/call.py)
        ├── InvalidEventError       a PBX event is self-contradictory (also Permanent)
        ├── WrongCallError          an event of another call was applied (also Permanent)
        └── CallStateError          a stored call cannot be read back (also Permanent)

``Retryable`` and ``Permanent`` are what the job queue reads to decide a failed job's fate: it
looks at classes, never at messages. Adapters subclass them (the Bitrix24 client's rate-limit
errors are meant to be ``RetryLater``, its bad-request errors ``Permanent``). Any other exception
a handler raises counts as transient (a bug is retried until the policy gives up, then kept as
``dead`` for an operator). ``retry_after`` is a number of seconds, or None for "use the backoff".

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


class Retryable(CallbridgeError):
    """A transient failure; the job will run again later."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetryLater(Retryable):
    """Not a failure: the job asked to run again later (it keeps its attempts)."""

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        super().__init__(message, retry_after=retry_after)


class Permanent(CallbridgeError):
    """A failure that retrying cannot fix."""


class JobError(CallbridgeError):
    """A job could not be queued, found or run."""


class UnknownJobKindError(JobError, Permanent):
    """No handler is registered for this job kind."""


class JobNotFoundError(JobError):
    """No job has this id."""


class JobStateError(JobError):
    """The job's status does not allow this operation."""


class LeaseLostError(JobError):
    """The job's lease expired and another worker claimed it; this run's result is discarded."""


class CallModelError(CallbridgeError):
    """The call model cannot accept this input."""


class InvalidEventError(CallModelError, Permanent):
    """The PBX event is invalid (e.g. a timestamp without a timezone)."""


class WrongCallError(CallModelError, Permanent):
    """The event belongs to another call."""


class CallStateError(CallModelError, Permanent):
    """The stored call is malformed or from an unknown version."""
