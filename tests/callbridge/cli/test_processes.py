"""End to end: `callbridge run` and `callbridge worker` as real processes, stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

STARTUP_TIMEOUT_SECONDS = 30.0
SHUTDOWN_TIMEOUT_SECONDS = 20.0

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(var_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    env.update(CALLBRIDGE_VAR_DIR=str(var_dir), CALLBRIDGE_LOG_FORMAT="json", **extra)
    return env


class Process:
    """A callbridge subprocess with its output in files (a full pipe would block it)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.stdout_path = cwd / f"{args[0]}.stdout"
        self.stderr_path = cwd / f"{args[0]}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "callbridge", *args],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=err,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8")

    def describe(self) -> str:
        return f"exit code {self.popen.poll()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"

    def wait_for(self, condition: str, check: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, f"exited before {condition}:\n{self.describe()}"
            if callable(check) and check():
                return
            time.sleep(0.1)
        pytest.fail(f"no {condition} within {timeout}s:\n{self.describe()}")

    def terminate_and_wait(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"did not stop within {SHUTDOWN_TIMEOUT_SECONDS}s:\n{self.describe()}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


def _answers_200(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


def test_run_serves_and_stops_cleanly_on_sigterm(tmp_path: Path, processes: list[Process]) -> None:
    port = free_port()
    var_dir = tmp_path / "var"
    process = Process(["run"], tmp_path, environment(var_dir, CALLBRIDGE_PORT=str(port)))
    processes.append(process)
    base = f"http://127.0.0.1:{port}"

    with httpx.Client(base_url=base, timeout=5) as client:
        process.wait_for(
            "/healthz", lambda: _answers_200(client, "/healthz"), STARTUP_TIMEOUT_SECONDS
        )
        process.wait_for(
            "/readyz", lambda: _answers_200(client, "/readyz"), STARTUP_TIMEOUT_SECONDS
        )
        ready = client.get("/readyz").json()
        document = client.get("/openapi.json").json()
        docs = client.get("/docs")

    assert ready["status"] == "ready"
    assert document["info"]["title"] == "callbridge"
    assert docs.status_code == 200

    exit_code = process.terminate_and_wait()

    assert exit_code == 0, process.describe()
    assert f"{base}/docs" in process.stdout
    assert f"{base}/healthz" in process.stdout
    assert "Database migrated" in process.stdout
    # Production-style JSON logs: every line of stderr is one JSON object.
    events = [json.loads(line)["event"] for line in process.stderr.splitlines() if line.strip()]
    assert "callbridge web app started" in events
    assert "Traceback" not in process.stderr
    assert (var_dir / "callbridge.db").is_file()
    assert stat.S_IMODE((var_dir / "secret.key").stat().st_mode) == 0o600


def test_worker_runs_until_sigterm(tmp_path: Path, processes: list[Process]) -> None:
    env = environment(tmp_path / "var")
    migrated = subprocess.run(
        [sys.executable, "-m", "callbridge", "migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_SECONDS,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    process = Process(["worker"], tmp_path, env)
    processes.append(process)

    process.wait_for("worker start", lambda: "started" in process.stderr, STARTUP_TIMEOUT_SECONDS)
    exit_code = process.terminate_and_wait()

    assert exit_code == 0, process.describe()
    assert "stopped" in process.stderr


def test_worker_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "callbridge", "worker"],
        cwd=tmp_path,
        env=environment(tmp_path / "var"),
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_SECONDS,
        check=False,
    )

    assert result.returncode == 1
    assert "callbridge migrate" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_reports_an_unmigrated_database_as_not_ready(
    tmp_path: Path, processes: list[Process]
) -> None:
    port = free_port()
    process = Process(["serve"], tmp_path, environment(tmp_path / "var", CALLBRIDGE_PORT=str(port)))
    processes.append(process)

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        process.wait_for(
            "/healthz", lambda: _answers_200(client, "/healthz"), STARTUP_TIMEOUT_SECONDS
        )
        ready = client.get("/readyz")

    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "migrations_pending"
    assert process.terminate_and_wait() == 0, process.describe()
