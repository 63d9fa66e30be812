"""``callbridge demo`` as a newcomer runs it: real processes, ports and AMI over TCP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def finished(emulator: str) -> list[dict[str, Any]]:
    try:
        calls = httpx.get(f"{emulator}/_emulator/calls", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return []
    return [call for call in calls if call.get("state") == "finished"]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_demo_plays_calls_into_the_emulator_and_stops_cleanly(tmp_path: Path) -> None:
    bridge, emulator_port, ami = free_port(), free_port(), free_port()
    emulator = f"http://127.0.0.1:{emulator_port}"
    env = {**os.environ, "CALLBRIDGE_VAR_DIR": str(tmp_path / "var")}
    env.pop("CALLBRIDGE_DATABASE_URL", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callbridge",
            "demo",
            "--port",
            str(bridge),
            "--emulator-port",
            str(emulator_port),
            "--ami-port",
            str(ami),
            "--speed",
            "20",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 45
        calls: list[dict[str, Any]] = []
        while time.monotonic() < deadline and process.poll() is None:
            calls = finished(emulator)
            if len(calls) >= 5:
                break
            time.sleep(0.5)
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        assert len(calls) >= 5, calls
        assert {call["STATUS_CODE"] for call in calls} <= {"200", "304"}
        assert any(c["STATUS_CODE"] == "200" and c["DURATION"] > 0 for c in calls)
        assert any(c["STATUS_CODE"] == "304" for c in calls[:6])
        assert any(c["CRM_ENTITY_TYPE"] == "CONTACT" for c in calls)
        # Its one-line-per-call summary shows up once the emulator has a call finished.
        time.sleep(1.5)
        spawned = children(process.pid)
        assert len(spawned) == 2  # the emulator and the AMI replayer

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    text = output.decode()
    assert process.returncode == 0, text
    assert f"{emulator}/" in text
    assert "status 200" in text
    assert "Stopped." in text
    assert not [pid for pid in spawned if alive(pid)]
    for port in (bridge, emulator_port, ami):
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), timeout=1),
        ):
            pass
    assert (tmp_path / "var" / "demo" / "callbridge.log").stat().st_size > 0
