"""AMI framing and parsing: bytes in, :class:`Message` objects out. Pure, no I/O.

The Asterisk Manager Interface is a line protocol over TCP. A connection starts with one banner
line (``Asterisk Call Manager/11.0.0``), then carries blocks of ``Key: Value`` lines, each block
ended by an empty line. Lines end with ``\\r\\n``; a bare ``\\n`` is tolerated. A block is a
*response* (``Response: ...``, matched to an action by ``ActionID``) or an *event*
(``Event: ...``). Keys may repeat (``ChanVariable``, ``Output``), and old Asterisk versions answer
``Command`` with ``Response: Follows`` and free text (which may hold blank lines) up to
``--END COMMAND--``.

:class:`AmiParser` is the framer. It keeps the partial tail of the stream between ``feed`` calls,
so any chunking of a stream yields the same messages, and it never raises on bad input: blocks
that are neither events nor responses are counted in :attr:`AmiParser.skipped`, lines without a
colon are kept in :attr:`Message.unparsed`, and a block larger than ``max_block_size`` is dropped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final

__all__ = [
    "BANNER_PREFIX",
    "Action",
    "AmiParser",
    "Event",
    "Message",
    "Response",
    "encode_action",
    "parse_stream",
]

BANNER_PREFIX: Final = b"Asterisk Call Manager/"
_END_COMMAND: Final = b"--END COMMAND--"
# A block ends at an empty line: "\n", an optional "\r", "\n" (covers CRLF and bare LF); the
# "\r" before is eaten too so the block's last line comes out clean.
_SEPARATOR: Final = re.compile(r"\r?\n\r?\n")
_BYTES_SEPARATOR: Final = re.compile(rb"\r?\n\r?\n")
_FOLLOWS: Final = re.compile(rb"(?m)^[ \t]*Response:[ \t]*Follows")
_FOLLOWS_TEXT: Final = re.compile(r"[ \t]*Response:[ \t]*Follows")
_FOLLOWS_BYTES: Final = re.compile(rb"[ \t]*Response:[ \t]*Follows")
# The banner is one short line; anything longer without a newline is not a banner.
_MAX_BANNER: Final = 256
# Keys a regex search finds exactly as the full parse would (no colon, line break, blank key).
_PEEKABLE: Final = re.compile(r"\A[^:\r\n]*[^:\s][^:\r\n]*\Z")
_FOLLOWS_HEADERS: Final = frozenset({"response", "privilege", "actionid", "message"})

HeaderValue = str | Sequence[str]


class Message:
    """One AMI block: ordered ``Key: Value`` headers with case-insensitive access.

    Parameters
    ----------
    items
        The headers in stream order; a key may repeat.
    unparsed
        Lines of the block that were not ``Key: Value`` (kept, never raised on).
    output
        Free text of a legacy ``Response: Follows`` block.

    Notes
    -----
    ``message[key]`` and :meth:`get` return the *first* value of a key; :meth:`getall` returns
    every value and :meth:`to_dict` turns repeated keys into lists.
    """

    __slots__ = (
        "_index_cache",
        "_items_cache",
        "_name_cache",
        "_output",
        "_text",
        "_unparsed_cache",
        "received_at",
    )

    def __init__(
        self,
        items: Iterable[tuple[str, str]],
        *,
        unparsed: Sequence[str] = (),
        output: Sequence[str] = (),
    ) -> None:
        self._items_cache: tuple[tuple[str, str], ...] | None = tuple(items)
        self._index_cache: dict[str, str] | None = None
        self._unparsed_cache: tuple[str, ...] = tuple(unparsed)
        self._text: str | None = None
        self._name_cache: str | None = None
        self._output = tuple(output)
        #: Wall-clock time (epoch seconds) the client read this message; None when not read
        #: from a connection.
        self.received_at: float | None = None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_block(cls, block: bytes | str) -> Message:
        """Parse one block (without its terminating empty line) into the right subclass.

        Returns an :class:`Event` when the block has an ``Event`` header, a :class:`Response`
        when it has ``Response``, else a plain :class:`Message` (which the parser skips).
        """
        text = block.decode("utf-8", "replace") if isinstance(block, bytes) else block
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        return _from_normalized(text)

    # -- access -------------------------------------------------------------------------------

    @property
    def _items(self) -> tuple[tuple[str, str], ...]:
        items = self._items_cache
        if items is None:
            assert self._text is not None
            parsed, unparsed = _parse_lines(self._text)
            items = self._items_cache = tuple(parsed)
            self._unparsed_cache = tuple(unparsed)
        return items

    @property
    def _unparsed(self) -> tuple[str, ...]:
        if self._items_cache is None:
            self._items  # noqa: B018  (parses the block)
        return self._unparsed_cache

    @property
    def _index(self) -> dict[str, str]:
        index = self._index_cache
        if index is None:
            index = self._index_cache = _make_index(self._items)
        return index

    def __getitem__(self, key: str) -> str:
        return self._index[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._index

    def get(self, key: str, default: str | None = None) -> str | None:
        """The first value of ``key`` (case-insensitive), or ``default``."""
        return self._index.get(key.lower(), default)

    def peek(self, key: str) -> str | None:
        """The first value of ``key``, as :meth:`get`, without parsing the rest of the block.

        For a consumer that drops most events of a name by one header (``VarSet`` by its
        ``Variable``): a lazily parsed event is searched, not parsed.
        """
        text = self._text
        if text is None or self._items_cache is not None or not _PEEKABLE.match(key):
            return self.get(key)
        match = _header_pattern(key).search(text)
        return match[1] if match is not None else None

    def getall(self, key: str) -> list[str]:
        """Every value of ``key`` (case-insensitive), in stream order."""
        lowered = key.lower()
        return [value for name, value in self._items if name.lower() == lowered]

    @property
    def items(self) -> tuple[tuple[str, str], ...]:
        """The headers in stream order, keys as the PBX spelt them."""
        return self._items

    def keys(self) -> list[str]:
        """Header names in stream order, without repeats."""
        return list(dict.fromkeys(name for name, _ in self._items))

    def to_dict(self) -> dict[str, str | list[str]]:
        """The headers as a dict; a repeated key's values become a list."""
        result: dict[str, str | list[str]] = {}
        for key, value in self._items:
            previous = result.get(key)
            if previous is None:
                result[key] = value
            elif isinstance(previous, list):
                previous.append(value)
            else:
                result[key] = [previous, value]
        return result

    @property
    def name(self) -> str:
        """The event name or the response status (``Success``, ``Error``...); empty if neither."""
        text = self._text
        if text is not None:
            # A lazily parsed event: its first line is "Event: <name>".
            newline = text.find("\n")
            first_line = _parse_line(text if newline < 0 else text[:newline])
            assert first_line is not None
            return first_line[1]
        items = self._items
        if items:
            first = items[0][0].lower()
            if first == "event" or (first == "response" and type(self) is not Event):
                return items[0][1]
        return self._index.get("event") or self._index.get("response") or ""

    @property
    def action_id(self) -> str | None:
        """The ``ActionID`` header, if any."""
        return self._index.get("actionid")

    @property
    def unparsed(self) -> tuple[str, ...]:
        """Lines that were not ``Key: Value`` headers."""
        return self._unparsed

    @property
    def malformed(self) -> bool:
        """True when some lines of the block could not be parsed."""
        return bool(self._unparsed)

    @property
    def output(self) -> tuple[str, ...]:
        """Command output: legacy ``Follows`` text, or the ``Output`` headers of newer PBXs."""
        if self._output:
            return self._output
        return tuple(self.getall("Output"))

    @property
    def timestamp(self) -> float | None:
        """The PBX's ``Timestamp`` header (``timestampevents = yes``) as epoch seconds."""
        raw = self._index.get("timestamp")
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            return None

    @property
    def chan_variables(self) -> dict[str, str]:
        """``ChanVariable: NAME=value`` headers (also ``ChanVariable(chan): ...``) as a dict."""
        result: dict[str, str] = {}
        for key, value in self._items:
            if key.lower().startswith("chanvariable"):
                name, _, val = value.partition("=")
                result[name] = val
        return result

    # -- output -------------------------------------------------------------------------------

    def encode(self) -> bytes:
        """The block as AMI bytes, CRLF line ends and the terminating empty line included."""
        parts = [f"{key}: {value}\r\n" for key, value in self._items]
        parts.extend(f"{line}\r\n" for line in self._unparsed)
        if self._output:
            parts.extend(f"{line}\r\n" for line in self._output)
            parts.append("--END COMMAND--\r\n")
        parts.append("\r\n")
        return "".join(parts).encode()

    def replace(self, **headers: str) -> Message:
        """A copy with headers set: existing keys keep their place, new ones go at the end."""
        return self.with_headers(headers)

    def with_headers(self, headers: Mapping[str, str], *, after: str | None = None) -> Message:
        """A copy with ``headers`` set; new keys go after the header ``after`` (else the end)."""
        pending = {key.lower(): (key, value) for key, value in headers.items()}
        items: list[tuple[str, str]] = []
        for key, value in self._items:
            lowered = key.lower()
            if lowered in pending:
                items.append((key, pending.pop(lowered)[1]))
            else:
                items.append((key, value))
        if pending:
            position = len(items)
            if after is not None:
                for i, (key, _) in enumerate(items):
                    if key.lower() == after.lower():
                        position = i + 1
                        break
            items[position:position] = list(pending.values())
        copy = type(self)(items, unparsed=self._unparsed, output=self._output)
        copy.received_at = self.received_at
        return copy

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            type(self) is type(other)
            and self._items == other._items
            and self._unparsed == other._unparsed
            and self._output == other._output
        )

    def __hash__(self) -> int:
        return hash((type(self), self._items, self._unparsed, self._output))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self._items)} headers)"


class Event(Message):
    """An AMI event (a block with an ``Event`` header)."""

    __slots__ = ()

    @property
    def event_list(self) -> str | None:
        """The ``EventList`` header lower-cased (``complete`` ends a list), if any."""
        value = self._index.get("eventlist")
        return value.lower() if value is not None else None


class Response(Message):
    """An AMI response to an action (a block with ``Response`` and no ``Event``)."""

    __slots__ = ()

    @property
    def success(self) -> bool:
        """True unless the PBX answered ``Response: Error`` (or something unknown)."""
        return self.name.lower() in ("success", "follows", "goodbye", "pong")

    @property
    def message(self) -> str:
        """The PBX's ``Message`` header (the reason for an error), or empty."""
        return self._index.get("message", "")

    @property
    def starts_event_list(self) -> bool:
        """True when events with this response's ActionID will follow (``EventList: start``)."""
        return self._index.get("eventlist", "").lower() == "start"


def _from_normalized(text: str) -> Message:
    """A block whose CRLFs are already LFs (done once per read by the framer)."""
    if text.endswith("\r"):
        text = text[:-1]
    text = text.lstrip("\n")
    newline = text.find("\n")
    first = _parse_line(text if newline < 0 else text[:newline])
    if first is not None and first[0].lower() == "event":
        # Most blocks are events and many are dropped by name: parse the rest on demand.
        event = Event.__new__(Event)
        event._text = text
        event._name_cache = first[1]
        event._items_cache = None
        event._unparsed_cache = ()
        event._index_cache = None
        event._output = ()
        event.received_at = None
        return event
    if _FOLLOWS_TEXT.match(text):
        return _from_follows_block(text)
    items, unparsed = _parse_lines(text)
    return _build(items, unparsed, ())


def _build(items: list[tuple[str, str]], unparsed: Sequence[str], output: Sequence[str]) -> Message:
    # Asterisk puts Event/Response first: classify from it and build the index lazily, so
    # events a consumer drops by name cost no dict.
    first = items[0][0].lower() if items else ""
    index: dict[str, str] | None = None
    if first == "event":
        message_cls: type[Message] = Event
    elif first == "response":
        message_cls = Event if any(k.lower() == "event" for k, _ in items) else Response
    else:
        index = _make_index(items)
        if "event" in index:
            message_cls = Event
        elif "response" in index:
            message_cls = Response
        elif "action" in index:
            message_cls = Action
        else:
            message_cls = Message
    message = message_cls.__new__(message_cls)
    message._items_cache = tuple(items)
    message._index_cache = index
    message._unparsed_cache = tuple(unparsed)
    message._text = None
    message._name_cache = None
    message._output = tuple(output)
    message.received_at = None
    return message


def _parse_line(line: str) -> tuple[str, str] | None:
    """``Key: Value`` (or ``Key:Value``) as a pair; None for a line without a key."""
    key, sep, value = line.partition(": ")
    if not sep or not key or ":" in key:
        # Off the fast path: "Key:value", "Key:" or no colon at all.
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            return None
        if value.startswith(" "):
            value = value[1:]
    return key, value


def _parse_lines(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    items: list[tuple[str, str]] = []
    unparsed: list[str] = []
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition(": ")
        if not sep or not key or ":" in key:
            pair = _parse_line(line)
            if pair is None:
                unparsed.append(line)
                continue
            key, value = pair
        items.append((key, value))
    return items, unparsed


@functools.lru_cache(maxsize=64)
def _header_pattern(key: str) -> re.Pattern[str]:
    # The same reading as _parse_line: the key is everything before the line's first colon,
    # compared case-insensitively; one space after the colon is not part of the value.
    return re.compile(rf"^{re.escape(key)}: ?(.*)$", re.MULTILINE | re.IGNORECASE)


def _make_index(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    # First value wins: walking in reverse lets the earliest assignment land last.
    return {key.lower(): value for key, value in reversed(list(items))}


def _from_follows_block(text: str) -> Message:
    """A legacy ``Response: Follows`` block: a few headers, then free text."""
    items: list[tuple[str, str]] = []
    output: list[str] = []
    for line in text.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        key, sep, value = line.partition(":")
        lowered = key.strip().lower()
        if not output and sep and lowered in _FOLLOWS_HEADERS:
            items.append((key.strip(), value[1:] if value.startswith(" ") else value))
        elif line != "--END COMMAND--" and (output or line):
            output.append(line)
    while output and not output[-1]:
        output.pop()
    return _build(items, (), output)


class Action(Message):
    """An AMI action (a block with ``Action``), as a server such as the replayer reads it."""

    __slots__ = ()


class AmiParser:
    """Incremental framer: feed it bytes as they arrive, get whole messages back.

    Parameters
    ----------
    expect_banner
        Strip an ``Asterisk Call Manager/x.y.z`` first line (the start of a TCP session).
    max_block_size
        A block that grows past this many bytes without ending is dropped (and counted in
        :attr:`skipped`) so a broken peer cannot make us buffer without bound.

    Attributes
    ----------
    banner
        The banner line without its line end (e.g. ``Asterisk Call Manager/11.0.0``), once seen.
    skipped
        Blocks dropped because they were neither events nor responses, or too large.
    """

    def __init__(self, *, expect_banner: bool = True, max_block_size: int = 1 << 20) -> None:
        self._buffer = bytearray()
        self._scan_from = 0
        self._banner_pending = expect_banner
        self._discarding = False
        self.max_block_size = max_block_size
        self.banner: str | None = None
        self.skipped = 0

    @property
    def version(self) -> str | None:
        """The protocol version from the banner (``11.0.0``), once seen."""
        if self.banner is None:
            return None
        return self.banner.rpartition("/")[2]

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the end of a block."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        """Add ``data`` to the stream; return the messages it completed.

        Those are events and responses (and actions, for a server); other blocks are skipped.
        """
        buffer = self._buffer
        buffer += data
        if self._banner_pending and not self._take_banner():
            return []
        # Only the bytes after the last empty line can be an unfinished block.
        scan_from = self._scan_from
        last = max(buffer.rfind(b"\n\n", scan_from), buffer.rfind(b"\n\r\n", scan_from))
        if last < 0:
            self._after_feed()
            return []
        complete = bytes(buffer[: buffer.find(b"\n", last + 1) + 1])
        if self._discarding or (b"Follows" in complete and _FOLLOWS.search(complete)):
            return self._feed_slow()
        del buffer[: len(complete)]
        self._after_feed()
        messages: list[Message] = []
        for block in _split_blocks(complete.decode("utf-8", "replace")):
            message = _from_normalized(block)
            if isinstance(message, Event | Response | Action):
                messages.append(message)
            elif block.strip():
                self.skipped += 1
        return messages

    def _feed_slow(self) -> list[Message]:
        """Block by block, for legacy ``Follows`` output and resynchronisation."""
        buffer = self._buffer
        messages: list[Message] = []
        start = 0
        search_from = 0
        while True:
            match = _BYTES_SEPARATOR.search(buffer, search_from)
            if match is None:
                break
            end, after = match.start(), match.end()
            if self._discarding:
                # The tail of an oversized block: drop it, resynchronise on the next one.
                self._discarding = False
                start = search_from = after
                continue
            if _starts_follows(buffer, start) and buffer.find(_END_COMMAND, start, end) < 0:
                # Legacy command output may contain empty lines: the block ends after the
                # --END COMMAND-- marker, not at the first empty line.
                marker = buffer.find(_END_COMMAND, start)
                if marker < 0:
                    break
                match = _BYTES_SEPARATOR.search(buffer, marker)
                if match is None:
                    break
                end, after = match.start(), match.end()
            block = bytes(buffer[start:end])
            start = search_from = after
            message = Message.from_block(block)
            if isinstance(message, Event | Response | Action):
                messages.append(message)
            elif block.strip():
                self.skipped += 1
        del buffer[:start]
        self._after_feed()
        return messages

    def _after_feed(self) -> None:
        buffer = self._buffer
        if len(buffer) > self.max_block_size:
            buffer.clear()
            self.skipped += 1
            self._discarding = True
        # A separator is at most 4 bytes: resume just before the end of what was searched.
        self._scan_from = max(0, len(buffer) - 3)

    def _take_banner(self) -> bool:
        """Strip the banner line if it is there; False while the first line is incomplete."""
        buffer = self._buffer
        newline = buffer.find(b"\n")
        if newline < 0:
            if len(buffer) < _MAX_BANNER and BANNER_PREFIX.startswith(
                bytes(buffer[: len(BANNER_PREFIX)])
            ):
                return False
            self._banner_pending = False
            return True
        self._banner_pending = False
        line = bytes(buffer[:newline]).rstrip(b"\r")
        if line.startswith(BANNER_PREFIX):
            self.banner = line.decode("utf-8", "replace")
            del buffer[: newline + 1]
        return True


def _starts_follows(buffer: bytearray, start: int) -> bool:
    # The same test Message.from_block applies to the decoded block.
    head = bytes(buffer[start : start + 256]).replace(b"\r\n", b"\n").lstrip(b"\n")
    return _FOLLOWS_BYTES.match(head) is not None


def _split_blocks(text: str) -> list[str]:
    # Same messages as splitting on \r?\n\r?\n and normalising each block, done in two
    # C-speed passes over the whole read; the blocks come back with LF line ends.
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text.split("\n\n")


def parse_stream(data: bytes, *, expect_banner: bool = True) -> list[Message]:
    """Every message of a complete byte stream (e.g. a recorded ``.ami`` file)."""
    return AmiParser(expect_banner=expect_banner, max_block_size=max(len(data), 1 << 20)).feed(data)


def iter_header_lines(headers: Mapping[str, HeaderValue]) -> Iterator[tuple[str, str]]:
    """Flatten ``{key: value | [values]}`` into ``(key, value)`` pairs, one per AMI line."""
    for key, value in headers.items():
        if isinstance(value, str):
            yield key, value
        else:
            for item in value:
                yield key, item


def encode_action(action: str, action_id: str, headers: Mapping[str, HeaderValue]) -> bytes:
    """The bytes of one AMI action; a list value becomes a repeated header (``Variable``).

    Raises
    ------
    ValueError
        A key or value holds a line break or a key holds a colon: sent as is, it would
        inject headers or a whole second action.
    """
    lines = [("Action", action), ("ActionID", action_id)]
    lines.extend(
        (key, value)
        for key, value in iter_header_lines(headers)
        if key.lower() not in ("action", "actionid")
    )
    parts = []
    for key, value in lines:
        if "\r" in key or "\n" in key or ":" in key or not key.strip():
            raise ValueError(f"invalid AMI header name {key!r}")
        if "\r" in value or "\n" in value:
            raise ValueError(f"AMI header {key} holds a line break")
        parts.append(f"{key}: {value}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode()
