"""AMI events per second on one core: ours parsed, ours parsed and translated, panoramisk parsed.

    .venv/bin/python benchmarks/ami.py [--events 200000] [--rounds 5] [--read-size 65536]

The stream is the recorded calls of ``tests/fixtures/ami/`` played one after another until it
holds ``--events`` events, each copy with its uniqueids, linkedids and timestamps moved on (so
every copy is a new set of calls to the translator, not late events of calls it has ended),
behind one ``Asterisk Call Manager`` banner, and cut into ``--read-size`` reads as a socket
delivers them. Every side gets the same list of byte strings:

- **ours, frame**: :class:`AmiParser` alone. Events come back with their headers unparsed (they
  are parsed on first access), which is what the listener pays for events it drops by name.
- **ours, parse**: the same, plus one header read per message, which parses every header
  into pairs and a case-insensitive index: the same work as panoramisk's dict per message.
- **ours, parse + translate**: the client's read loop (parser, ``received_at``) feeding every
  event to :class:`AmiTranslator`, which produces the call facts.
- **panoramisk, parse**: its ``AMIProtocol.data_received`` (decode, split on empty lines,
  ``Message.from_line`` builds a case-insensitive dict of every header) on a fake transport,
  with ``handle_message`` collecting the messages instead of routing them to callbacks.

The sides run in turn within each round (the order rotates) and the median of ``--rounds``
is reported, timed by the process's CPU time (``--wall`` for the wall clock: on a shared host
that measures the neighbours too), on one CPU when the OS lets us pin the process. ``ratio`` is
ours parse over panoramisk parse. panoramisk comes from the ``bench`` extra (``make bench``
installs it: ``pip install -e '.[dev,bench]'``).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from callbridge.pbx.ami.protocol import AmiParser, Event
from callbridge.pbx.ami.translate import AmiTranslator

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ami"
BANNER = b"Asterisk Call Manager/11.0.0\r\n"
AIM = 50_000  # events/s parsed and translated on one core
# Uniqueids, linkedids and Timestamp headers are epoch seconds with a fraction; the recordings
# span under an hour, so moving each copy on by this much never collides with another copy.
_EPOCH_ID = re.compile(rb"(?<![\d.])(1\d{9})\.(\d+)")
_COPY_OFFSET = 10_000


@dataclass(frozen=True)
class Stream:
    """The benchmark input: socket-sized reads of a long AMI session."""

    chunks: list[bytes]
    events: int
    copies: int
    calls: int
    size: int


def build_stream(target_events: int, read_size: int) -> Stream:
    """Repeat the recorded calls (ids moved on per copy) until ``target_events`` are reached."""
    bodies = []
    for path in sorted(FIXTURES.glob("*.ami")):
        data = path.read_bytes()
        if data.startswith(b"Asterisk Call Manager/"):
            data = data[data.index(b"\n") + 1 :]
        bodies.append(data)
    events_per_copy = sum(
        body.count(b"\r\nEvent: ") + body.startswith(b"Event: ") for body in bodies
    )
    copies = max(1, -(-target_events // events_per_copy))
    parts = [BANNER]
    for copy in range(copies):
        shift = copy * _COPY_OFFSET

        def moved(match: re.Match[bytes], shift: int = shift) -> bytes:
            return b"%d.%s" % (int(match[1]) + shift, match[2])

        parts.extend(_EPOCH_ID.sub(moved, body) for body in bodies)
    data = b"".join(parts)
    chunks = [data[i : i + read_size] for i in range(0, len(data), read_size)]
    return Stream(chunks, events_per_copy * copies, copies, len(bodies) * copies, len(data))


# -- the sides: each takes the reads and returns (events, facts) ----------------------------------


def ours_frame(chunks: list[bytes]) -> tuple[int, int]:
    """Framing only; event headers stay unparsed until read."""
    parser = AmiParser()
    events = 0
    for chunk in chunks:
        for message in parser.feed(chunk):
            if isinstance(message, Event):
                events += 1
    return events, 0


def ours_parse(chunks: list[bytes]) -> tuple[int, int]:
    """Framing plus a header read per message, which parses every header of the block."""
    parser = AmiParser()
    events = 0
    for chunk in chunks:
        for message in parser.feed(chunk):
            message.get("Linkedid")
            if isinstance(message, Event):
                events += 1
    return events, 0


def ours_translate(chunks: list[bytes]) -> tuple[int, int]:
    """The client's read loop feeding the translator: bytes in, call facts out."""
    parser = AmiParser()
    translator = AmiTranslator()
    events = facts = 0
    for chunk in chunks:
        now = time.time()
        for message in parser.feed(chunk):
            message.received_at = now
            if isinstance(message, Event):
                events += 1
                facts += len(translator.feed(message))
    return events, facts


def panoramisk_side() -> tuple[str, Callable[[list[bytes]], tuple[int, int]] | None]:
    """panoramisk's parse as a side, or why it cannot run."""
    try:
        version = metadata.version("panoramisk")
        from panoramisk.ami_protocol import AMIProtocol
    except Exception as err:  # noqa: BLE001  (any failure to install or import is reported)
        return f"panoramisk unavailable ({type(err).__name__}: {err})", None

    class _Transport:
        def write(self, data: bytes) -> None:
            pass

        def close(self) -> None:
            pass

    class _Collecting(AMIProtocol):
        # The real protocol routes each message to action futures or event callbacks; collect
        # them instead, as our parser returns them.
        def handle_message(self, message: object) -> None:
            self.messages.append(message)

    def parse(chunks: list[bytes]) -> tuple[int, int]:
        protocol = _Collecting()
        protocol.connection_made(_Transport())
        protocol.messages = messages = []
        events = 0
        for chunk in chunks:
            protocol.data_received(chunk)
            events += sum(1 for message in messages if "event" in message)
            messages.clear()
        return events, 0

    return f"panoramisk {version}", parse


# -- running -------------------------------------------------------------------------------------


def pin_to_one_cpu(requested: int | None) -> str:
    """Pin the process to one CPU where the OS allows it; say which."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity here)"
    allowed = sorted(os.sched_getaffinity(0))
    cpu = requested if requested is not None else allowed[-1]
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as err:
        return f"not pinned ({err})"
    return f"pinned to CPU {cpu} of {len(allowed)}"


def _timed(
    side: Callable[[list[bytes]], tuple[int, int]], chunks: list[bytes], clock: Callable[[], float]
) -> tuple[float, int, int]:
    gc.collect()
    started = clock()
    events, facts = side(chunks)
    return clock() - started, events, facts


def main() -> None:
    """Print events/s per side and the ratios."""
    options = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    options.add_argument("--events", type=int, default=200_000)
    options.add_argument("--rounds", type=int, default=5)
    options.add_argument("--read-size", type=int, default=65536, help="bytes per socket read")
    options.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: last)")
    options.add_argument(
        "--wall", action="store_true", help="time by the wall clock instead of CPU time"
    )
    args = options.parse_args()

    pinned = pin_to_one_cpu(args.cpu)
    stream = build_stream(args.events, args.read_size)
    # One copy alone tells how many facts each copy must yield: the repeats are only realistic
    # if the translator treats every copy as new calls.
    facts_per_copy = ours_translate(build_stream(1, args.read_size).chunks)[1]

    panoramisk_label, panoramisk_parse = panoramisk_side()
    sides: dict[str, Callable[[list[bytes]], tuple[int, int]]] = {
        "ours: frame (headers parsed lazily)": ours_frame,
        "ours: parse (every header read)": ours_parse,
        "ours: parse + translate": ours_translate,
    }
    panoramisk_name = f"{panoramisk_label}: parse (Message.from_line)"
    if panoramisk_parse is not None:
        sides[panoramisk_name] = panoramisk_parse

    print(
        f"AMI stream: {stream.calls // stream.copies} recorded calls x {stream.copies} = "
        f"{stream.calls} calls, {stream.events:,} events, {stream.size / 2**20:.1f} MiB, "
        f"in {len(stream.chunks)} reads of {args.read_size} bytes"
    )
    clock = time.perf_counter if args.wall else time.process_time
    timing = (
        "wall-clock time" if args.wall else "CPU time of this process (robust on a shared host)"
    )
    print(f"{pinned}; {timing}; {args.rounds} rounds, sides interleaved")
    print(f"{'side':<48} {'events/s: median (min-max)':>37}")
    if panoramisk_parse is None:
        print(f"{panoramisk_label}: install with pip install -e '.[dev,bench]'")

    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    facts_seen = 0
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            elapsed, events, facts = _timed(sides[name], stream.chunks, clock)
            if events != stream.events:
                raise SystemExit(f"{name} saw {events} events, expected {stream.events}")
            times[name].append(elapsed)
            facts_seen = max(facts_seen, facts)

    rates: dict[str, float] = {}
    for name in names:
        per_run = [stream.events / t for t in times[name]]
        rates[name] = statistics.median(per_run)
        print(
            f"{name:<48} {rates[name]:>10,.0f}  ({min(per_run):,.0f}-{max(per_run):,.0f})"
            f"  {stream.size / statistics.median(times[name]) / 2**20:6.1f} MiB/s"
        )
    expected_facts = facts_per_copy * stream.copies
    print(
        f"translator: {facts_seen:,} call facts ({expected_facts:,} expected from "
        f"{facts_per_copy} per copy)"
    )
    translate = rates["ours: parse + translate"]
    verdict = "met" if translate >= AIM else "NOT met"
    print(f"aim: >= {AIM:,} events/s parsed and translated on one core: {verdict}")
    if panoramisk_parse is None:
        print("ratio: n/a (panoramisk did not run)")
        return
    theirs = rates[panoramisk_name]
    print(f"ratio: {rates['ours: parse (every header read)'] / theirs:.2f}")
    print(
        f"ratio parse + translate: {translate / theirs:.2f}"
        "  (ours parse + translate / panoramisk parse)"
    )
    print(f"ratio frame: {rates['ours: frame (headers parsed lazily)'] / theirs:.2f}")


if __name__ == "__main__":
    main()
