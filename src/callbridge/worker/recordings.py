"""Recordings the PBX reports as a file path: which files may be read, and reading them.

A ``call.recording`` event (or AMI's ``MIXMONITOR_FILENAME``) may name a file on the PBX rather
than a URL. The PBX is not trusted to name any file it likes, and one bridge serves many
enterprises, whose recordings may sit side by side. A path is read only when, after resolving
symlinks and ``..``:

- it lies inside one of the bridge's recordings directories (``CALLBRIDGE_RECORDINGS_DIRS``,
  the upper bound for every enterprise), and
- when the enterprise has recordings directories of its own (``callbridge enterprise
  set-recordings``), inside one of those too. An enterprise without any falls back to the
  bridge's directories: fine for a bridge serving one enterprise, a warning where it serves
  several (one enterprise's webhook could name another's file);

and it is a regular file no bigger than the size cap. A path outside is refused for good; a
file that is not there yet (MixMonitor still writing, NFS lag) is worth waiting for.

    RecordingError
    ├── RecordingRefusedError (Permanent)    outside the directories, not a file, relative path
    ├── RecordingTooLargeError (Permanent)   above the size cap
    ├── RecordingMissingError (Retryable)    not there (yet), or still empty
    └── RecordingNotReadyError (Permanent)   still missing after the wait
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from callbridge.domain.errors import CallbridgeError, Permanent, Retryable

__all__ = [
    "CHUNK_BYTES",
    "OpenRecording",
    "RecordingError",
    "RecordingMissingError",
    "RecordingNotReadyError",
    "RecordingRefusedError",
    "RecordingTooLargeError",
    "missing_recording_error",
    "missing_retry_delay",
    "missing_wait_so_far",
    "open_recording",
]

#: Bytes read at a time while streaming a recording.
CHUNK_BYTES = 256 * 1024


class RecordingError(CallbridgeError):
    """A recording file cannot be read."""


class RecordingRefusedError(RecordingError, Permanent):
    """The recording's path is not one callbridge may read."""


class RecordingTooLargeError(RecordingError, Permanent):
    """The recording file is bigger than the configured cap."""


class RecordingMissingError(RecordingError, Retryable):
    """The recording file does not exist (yet)."""


class RecordingNotReadyError(RecordingError, Permanent):
    """A recording file on the PBX did not appear in time."""


@dataclass
class OpenRecording:
    """A recording file opened for reading: its resolved path, size and file object."""

    path: Path
    size: int
    file: BinaryIO

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    async def read_all(self) -> bytes:
        """The whole content (``size`` bytes), read off the event loop."""
        return await asyncio.to_thread(self.file.read, self.size)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The content in chunks of at most :data:`CHUNK_BYTES`, read off the event loop."""
        left = self.size
        while left > 0:
            chunk = await asyncio.to_thread(self.file.read, min(CHUNK_BYTES, left))
            if not chunk:
                raise RecordingMissingError(f"recording {self.path} shrank while being read")
            left -= len(chunk)
            yield chunk


def open_recording(
    path: str,
    allowed_dirs: Sequence[Path],
    max_bytes: int,
    *,
    enterprise_dirs: Sequence[Path] = (),
    enterprise: str = "",
) -> OpenRecording:
    """Open the recording at ``path`` if the policy allows it (blocking: run it in a thread).

    ``allowed_dirs`` are the bridge's directories; ``enterprise_dirs``, when given, the
    directories of the enterprise (number ``enterprise``) that reported the recording.
    """
    if not allowed_dirs:
        raise RecordingRefusedError(
            f"recording {path!r} is a file on the PBX, but no recordings directory is "
            "configured (CALLBRIDGE_RECORDINGS_DIRS)"
        )
    candidate = Path(path)
    if not candidate.is_absolute():
        raise RecordingRefusedError(f"recording path {path!r} is not absolute")
    # resolve() follows every symlink and folds ``..``: what is checked is what gets opened.
    resolved = candidate.resolve(strict=False)
    who = f"enterprise {enterprise}" if enterprise else "the enterprise"
    if enterprise_dirs:
        own = [directory.resolve(strict=False) for directory in enterprise_dirs]
        if not any(resolved.is_relative_to(root) for root in own):
            fix = f"callbridge enterprise set-recordings {enterprise or 'NUMBER'} DIR..."
            raise RecordingRefusedError(
                f"recording {path!r} (resolved to {str(resolved)!r}) is outside {who}'s "
                f"recordings directories ({', '.join(str(root) for root in own)}); refused. "
                f"If the file is {who}'s, add its directory: `{fix}`"
            )
    roots = [directory.resolve(strict=False) for directory in allowed_dirs]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise RecordingRefusedError(
            f"recording {path!r} (resolved to {str(resolved)!r}) is outside the recordings "
            f"directories ({', '.join(str(root) for root in roots)}); refused. "
            "Every recording read by path must lie inside CALLBRIDGE_RECORDINGS_DIRS"
        )
    try:
        # O_NOFOLLOW: a symlink swapped in after the check is not followed out of the directory.
        fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as err:
        raise RecordingMissingError(f"recording {path!r} does not exist (yet)") from err
    except OSError as err:
        raise RecordingRefusedError(f"recording {path!r} cannot be opened: {err}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RecordingRefusedError(f"recording {path!r} is not a regular file")
        if info.st_size > max_bytes:
            raise RecordingTooLargeError(
                f"recording {path!r} has {info.st_size} bytes, more than the "
                f"{max_bytes} allowed (CALLBRIDGE_RECORDING_MAX_BYTES)"
            )
        if info.st_size == 0:
            # MixMonitor creates the file at once and fills it in as the call goes.
            raise RecordingMissingError(f"recording {path!r} is still empty")
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return OpenRecording(resolved, info.st_size, file)


def missing_retry_delay(attempt: int) -> float:
    """Seconds to wait for a missing recording after run number ``attempt``: 5, 10, 20, … 120.

    With a job's 10 attempts this spans 635 s, past the default wait of 600 s.
    """
    return min(120.0, 5.0 * 2.0 ** max(attempt - 1, 0))


def missing_wait_so_far(attempt: int) -> float:
    """Seconds already waited for a missing recording before run number ``attempt``."""
    return sum(missing_retry_delay(run) for run in range(1, attempt))


def missing_recording_error(
    err: RecordingMissingError, attempt: int, max_attempts: int, wait_seconds: float
) -> RecordingError:
    """What a missing file at run ``attempt`` means: wait (with backoff) or give up for good."""
    waited = missing_wait_so_far(attempt)
    if waited >= wait_seconds or attempt >= max_attempts:
        return RecordingNotReadyError(
            f"{err}; gave up after waiting {waited:.0f}s over {attempt} tries "
            f"(CALLBRIDGE_RECORDING_WAIT_SECONDS={wait_seconds:g})"
        )
    return RecordingMissingError(str(err), retry_after=missing_retry_delay(attempt))
