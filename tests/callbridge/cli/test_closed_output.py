"""A reader that leaves early is not an error of ours."""

from __future__ import annotations

import subprocess
import sys


class TestClosedOutput:
    def test_reader_leaving_is_not_reported_as_a_database_error(self) -> None:
        # `callbridge ... | head` closes the pipe early; Python raises BrokenPipeError, which
        # is a ConnectionError and used to be reported as "cannot use the database".
        process = subprocess.Popen(
            [sys.executable, "-m", "callbridge", "keygen"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        process.stdout.close()
        _, stderr = process.communicate(timeout=60)
        assert stderr == b""
        assert process.returncode == 0
