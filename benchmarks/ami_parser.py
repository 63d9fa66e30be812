"""How many AMI messages per second the framer and parser handle on one core.

Feeds the recorded streams in tests/fixtures/ami/ to :class:`AmiParser` the way a socket
delivers them (64 KiB and 4 KiB reads), and whole, and reports the best of several rounds.
"Parse + read" also touches what a translator reads on every event (name, Linkedid), which
builds the lazily made header index. Usage::

    .venv/bin/python benchmarks/ami_parser.py [--rounds 7] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path

from callbridge.pbx.ami.protocol import AmiParser, Message

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ami"


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _parse(streams: list[list[bytes]]) -> int:
    count = 0
    for chunks in streams:
        parser = AmiParser()
        for chunk in chunks:
            count += len(parser.feed(chunk))
    return count


def _parse_and_read(streams: list[list[bytes]]) -> int:
    count = 0
    for chunks in streams:
        parser = AmiParser()
        for chunk in chunks:
            messages: list[Message] = parser.feed(chunk)
            for message in messages:
                if message.name != "VarSet":
                    message.get("Linkedid")
            count += len(messages)
    return count


def _rate(work: Callable[[], int], rounds: int, seconds: float) -> float:
    best = 0.0
    for _ in range(rounds):
        done = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            done += work()
        best = max(best, done / elapsed)
    return best


def main() -> None:
    """Print messages/s for each way of feeding the parser."""
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--rounds", type=int, default=7)
    options.add_argument("--seconds", type=float, default=1.0)
    args = options.parse_args()

    files = sorted(FIXTURES.glob("*.ami"))
    data = [path.read_bytes() for path in files]
    total_bytes = sum(map(len, data))
    messages = _parse([[d] for d in data])
    print(f"{len(files)} recorded streams, {messages} messages, {total_bytes / 1024:.0f} KiB")
    for label, size in (("whole files", 0), ("64 KiB reads", 65536), ("4 KiB reads", 4096)):
        streams = [[d] if not size else _chunks(d, size) for d in data]
        for name, work in (("parse", _parse), ("parse + read", _parse_and_read)):
            rate = _rate(functools.partial(work, streams), args.rounds, args.seconds)
            mib = rate * total_bytes / messages / 2**20
            print(f"{label:>13} {name:<13} {rate:>10,.0f} messages/s  ({mib:5.1f} MiB/s)")


if __name__ == "__main__":
    main()
