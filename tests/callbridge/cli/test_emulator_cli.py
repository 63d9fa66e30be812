"""`callbridge emulator` hands its arguments to the emulator package."""

from __future__ import annotations

import subprocess
import sys


class TestEmulatorCommand:
    def test_passes_arguments_through(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "callbridge", "emulator", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "--plan {standard,enterprise,unlimited}" in result.stdout

    def test_bad_option_is_the_emulator_s_error(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "callbridge", "emulator", "--plan", "gold"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert "invalid choice: 'gold'" in result.stderr
