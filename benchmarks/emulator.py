"""How many requests per second the emulator serves over real HTTP on one core.

Starts ``python -m bitrix24_emulator`` (one uvicorn worker, rate limit off) on a free local port,
drives it for a few seconds per scenario with a minimal keep-alive HTTP/1.1 client (so the client
is not the bottleneck), prints requests/s, and stops the server. Usage::

    .venv/bin/python benchmarks/emulator.py [--seconds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from dataclasses import dataclass

HOOK = "/rest/1/emulatorhook0001"


@dataclass
class Scenario:
    """One kind of request to repeat."""

    name: str
    method: str
    path: str
    body: bytes = b""
    content_type: str = ""

    def request(self, port: int) -> bytes:
        """The raw HTTP/1.1 request."""
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        if self.body:
            head += f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
        return (head + "\r\n").encode() + self.body


SCENARIOS = [
    Scenario("GET app.info (webhook)", "GET", f"{HOOK}/app.info.json"),
    Scenario(
        "POST JSON user.get filter (webhook)",
        "POST",
        f"{HOOK}/user.get.json",
        json.dumps({"FILTER": {"UF_PHONE_INNER": "101"}}).encode(),
        "application/json",
    ),
    Scenario(
        "POST form searchCrmEntities (webhook)",
        "POST",
        f"{HOOK}/telephony.externalCall.searchCrmEntities.json",
        b"PHONE_NUMBER=%2B74951002030",
        "application/x-www-form-urlencoded",
    ),
]


def free_port() -> int:
    """A port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def worker(port: int, payload: bytes, deadline: float, counts: dict[int, int]) -> None:
    """One keep-alive connection sending requests back to back until the deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            writer.write(payload)
            status = await read_response(reader)
            counts[status] = counts.get(status, 0) + 1
    finally:
        writer.close()
        await writer.wait_closed()


async def run(
    port: int, scenario: Scenario, seconds: float, connections: int
) -> tuple[float, dict[int, int]]:
    """Drive one scenario; returns requests/s and the status counts."""
    payload = scenario.request(port)
    counts: dict[int, int] = {}
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(worker(port, payload, deadline, counts) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return sum(counts.values()) / elapsed, counts


async def wait_ready(port: int, limit_s: float = 20.0) -> None:
    """Wait until the server accepts connections."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError("emulator did not start")


async def main(argv: list[str] | None = None) -> int:
    """Start the emulator, run every scenario, print the numbers, stop the emulator."""
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--seconds", type=float, default=5.0)
    options.add_argument("--connections", type=int, default=32)
    args = options.parse_args(argv)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")]))
    server = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "bitrix24_emulator",
            "--port",
            str(port),
            "--no-rate-limit",
            "--operating-limit",
            "1e12",
        ],
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_ready(port)
        print(f"emulator on 127.0.0.1:{port}, one uvicorn worker, {args.connections} connections")
        for scenario in SCENARIOS:
            await run(port, scenario, 0.5, args.connections)  # warm-up
            rate, counts = await run(port, scenario, args.seconds, args.connections)
            print(f"{scenario.name:42s} {rate:9.0f} requests/s   statuses {counts}")
    finally:
        server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 10)
        except TimeoutError:
            server.kill()
            await server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
