"""Framing and parsing of AMI byte streams, on the recorded streams and on fuzzed input."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callbridge.pbx.ami.protocol import (
    Action,
    AmiParser,
    Event,
    Message,
    Response,
    encode_action,
    parse_stream,
)
from tests.callbridge.pbx.ami.conftest import FIXTURES, MESSAGES, STREAMS, stream


def _timing_rows(path: Path) -> list[list[str]]:
    lines = path.with_suffix(".timing.tsv").read_text().splitlines()
    return [line.split("\t") for line in lines[1:]]


def _feed_in_chunks(data: bytes, sizes: list[int]) -> tuple[list[Message], AmiParser]:
    parser = AmiParser()
    messages: list[Message] = []
    position = 0
    for size in sizes:
        messages += parser.feed(data[position : position + size])
        position += size
    messages += parser.feed(data[position:])
    return messages, parser


class TestRecordedStreams:
    def test_every_fixture_is_covered(self) -> None:
        assert {path.stem for path in STREAMS} == set(MESSAGES)
        assert (FIXTURES / "asterisk-conf" / "manager.conf").exists()

    @pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
    def test_message_count_and_names_match_the_timing_file(self, path: Path) -> None:
        parser = AmiParser()
        messages = parser.feed(path.read_bytes())

        rows = _timing_rows(path)
        assert len(messages) == MESSAGES[path.stem] == len(rows)
        assert [(m.name, type(m).__name__) for m in messages] == [(row[4], row[3]) for row in rows]
        assert parser.banner == "Asterisk Call Manager/11.0.0"
        assert parser.version == "11.0.0"
        assert parser.skipped == 0
        assert parser.buffered == 0
        assert not any(m.malformed for m in messages)

    @pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
    def test_byte_by_byte_gives_the_same_messages(self, path: Path) -> None:
        data = path.read_bytes()

        messages, parser = _feed_in_chunks(data, [1] * len(data))

        assert messages == parse_stream(data)
        assert parser.buffered == 0

    @pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
    def test_encode_gives_back_the_recorded_bytes(self, path: Path) -> None:
        data = path.read_bytes()

        encoded = b"".join(m.encode() for m in parse_stream(data))

        assert encoded == data.split(b"\n", 1)[1]

    def test_login_response_and_events(self) -> None:
        messages = parse_stream(stream("a_inbound_answered").read_bytes())

        login = messages[0]
        assert isinstance(login, Response)
        assert login.success
        assert login.action_id == "crm-11"
        assert login.message == "Authentication accepted"
        newchannel = next(m for m in messages if m.name == "Newchannel")
        assert isinstance(newchannel, Event)
        assert newchannel["channel"] == newchannel["CHANNEL"] == "PJSIP/trunk-00000000"
        assert newchannel.get("Linkedid") == "1795708539.0"
        assert newchannel.get("AccountCode") == ""
        assert newchannel.get("Missing") is None
        assert "uniqueid" in newchannel
        assert newchannel.keys()[:2] == ["Event", "Privilege"]
        goodbye = messages[-1]
        assert isinstance(goodbye, Response)
        assert goodbye.name == "Goodbye"

    def test_originate_response_is_an_event_even_with_a_response_header(self) -> None:
        messages = parse_stream(stream("h_click2call_outbound").read_bytes())

        originate = next(m for m in messages if m.name == "OriginateResponse")

        assert isinstance(originate, Event)
        assert originate["Response"] == "Success"
        assert originate.action_id == "pbx-136"

    def test_timestamps(self) -> None:
        messages = parse_stream(stream("a2_inbound_answered_timestamps").read_bytes())

        events = [m for m in messages if isinstance(m, Event)]

        assert all(e.timestamp is not None for e in events[2:])
        assert events[2].timestamp == pytest.approx(1795711841.995281)
        assert messages[0].timestamp is None


class TestMessage:
    def test_repeated_keys_become_lists(self) -> None:
        message = Message.from_block(
            b"Event: Newchannel\r\nChanVariable: A=1\r\nChanVariable(PJSIP/1-0): B=x=y\r\n"
            b"chanvariable: C=\r\n"
        )

        assert message.getall("ChanVariable") == ["A=1", "C="]
        assert message["ChanVariable"] == "A=1"
        assert message.chan_variables == {"A": "1", "B": "x=y", "C": ""}
        assert message.to_dict() == {
            "Event": "Newchannel",
            "ChanVariable": "A=1",
            "ChanVariable(PJSIP/1-0)": "B=x=y",
            "chanvariable": "C=",
        }
        twice = Message.from_block("Response: Success\nOutput: line 1\nOutput: line 2")
        assert twice.to_dict()["Output"] == ["line 1", "line 2"]
        assert twice.output == ("line 1", "line 2")

    def test_values_keep_colons_and_spaces(self) -> None:
        message = Message.from_block(
            b"Event: X\r\nAppData: PJSIP/101,15,tT\r\nUrl: http://a:b@c/d\r\nK:v\r\nE:\r\n"
            b"Pad:   three\r\n"
        )

        assert message["Url"] == "http://a:b@c/d"
        assert message["K"] == "v"
        assert message["E"] == ""
        assert message["Pad"] == "  three"

    def test_lines_without_colon_are_kept_not_raised(self) -> None:
        message = Message.from_block(b"Event: X\r\ngarbage line\r\n: no key\r\nA: 1")

        assert isinstance(message, Event)
        assert message.malformed
        assert message.unparsed == ("garbage line", ": no key")
        assert message["A"] == "1"

    def test_kinds(self) -> None:
        assert type(Message.from_block(b"Action: Ping\r\nActionID: 1")) is Action
        assert type(Message.from_block(b"Foo: bar")) is Message
        assert type(Message.from_block(b"")) is Message
        assert Message.from_block(b"Foo: bar").name == ""
        assert not Response([("Response", "Error")]).success

    def test_with_headers_inserts_after_a_key(self) -> None:
        event = Message.from_block(b"Event: X\r\nPrivilege: call,all\r\nUniqueid: 1.0")

        changed = event.with_headers({"Timestamp": "5.0", "uniqueid": "2.0"}, after="Privilege")

        assert changed.items == (
            ("Event", "X"),
            ("Privilege", "call,all"),
            ("Timestamp", "5.0"),
            ("Uniqueid", "2.0"),
        )
        assert isinstance(changed, Event)
        assert event["Uniqueid"] == "1.0"

    def test_legacy_follows_output_may_hold_blank_lines(self) -> None:
        data = (
            b"Asterisk Call Manager/1.1\r\n"
            b"Response: Follows\r\nPrivilege: Command\r\nActionID: 7\r\n"
            b"Name: value looks like a header\n\nsecond paragraph\n--END COMMAND--\r\n\r\n"
            b"Event: After\r\n\r\n"
        )

        whole = parse_stream(data)
        chunked, _ = _feed_in_chunks(data, [1] * len(data))

        assert whole == chunked
        assert [m.name for m in whole] == ["Follows", "After"]
        follows = whole[0]
        assert follows.action_id == "7"
        assert follows.output == ("Name: value looks like a header", "", "second paragraph")
        assert parse_stream(follows.encode(), expect_banner=False) == [follows]

    def test_bare_newlines_are_tolerated(self) -> None:
        crlf = parse_stream(b"Asterisk Call Manager/9\r\nEvent: A\r\nX: 1\r\n\r\nEvent: B\r\n\r\n")
        lf = parse_stream(b"Asterisk Call Manager/9\nEvent: A\nX: 1\n\nEvent: B\n\n")
        mixed = parse_stream(b"Asterisk Call Manager/9\nEvent: A\r\nX: 1\n\r\nEvent: B\r\n\n")

        assert crlf == lf == mixed
        assert [m.name for m in crlf] == ["A", "B"]

    def test_no_banner_is_fine(self) -> None:
        parser = AmiParser()

        messages = parser.feed(b"Event: A\r\n\r\n")

        assert [m.name for m in messages] == ["A"]
        assert parser.banner is None

    def test_blocks_that_are_neither_event_nor_response_are_skipped(self) -> None:
        parser = AmiParser(expect_banner=False)

        messages = parser.feed(b"Foo: bar\r\n\r\n\r\n\r\nEvent: A\r\n\r\n")

        assert [m.name for m in messages] == ["A"]
        assert parser.skipped == 1

    def test_oversized_block_is_dropped_and_the_stream_resynchronises(self) -> None:
        parser = AmiParser(expect_banner=False, max_block_size=100)

        first = parser.feed(b"Event: Huge\r\nData: " + b"x" * 200)
        rest = parser.feed(b"x" * 50 + b"\r\n\r\nEvent: Next\r\n\r\n")

        assert first == []
        assert [m.name for m in rest] == ["Next"]
        assert parser.skipped == 1


class TestEncodeAction:
    def test_repeated_headers_and_action_id_first(self) -> None:
        data = encode_action(
            "Originate", "t-1", {"Channel": "PJSIP/101", "Variable": ["A=1", "B=2"]}
        )

        assert data == (
            b"Action: Originate\r\nActionID: t-1\r\nChannel: PJSIP/101\r\n"
            b"Variable: A=1\r\nVariable: B=2\r\n\r\n"
        )

    @pytest.mark.parametrize(
        "headers",
        [
            {"Exten": "101\r\n\r\nAction: Originate"},
            {"Exten": "101\nAction: Hangup"},
            {"Bad:Key": "x"},
            {"": "x"},
        ],
    )
    def test_header_injection_is_refused(self, headers: dict[str, str]) -> None:
        with pytest.raises(ValueError, match="AMI header"):
            encode_action("Originate", "t-1", headers)


# A valid stream built from the recordings, to cut at random places.
_SAMPLE = stream("f_blind_transfer_refer").read_bytes()[:6000]
_SAMPLE_END = _SAMPLE.rfind(b"\r\n\r\n") + 4
_SAMPLE = _SAMPLE[:_SAMPLE_END]
_SAMPLE_MESSAGES = parse_stream(_SAMPLE)

_ami_alphabet = st.sampled_from(
    [
        *(b"\r", b"\n", b"\r\n", b":", b": ", b" ", b"!", b"\x00", b"\xff\xfe", b"a", b"Z"),
        *(b"Event", b"Response", b"Follows", b"--END COMMAND--", b"Asterisk Call Manager/"),
        b"ActionID",
    ]
)


class TestFuzz:
    @settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
    @given(
        data=st.one_of(
            st.binary(max_size=4000),
            st.lists(_ami_alphabet, max_size=400).map(b"".join),
        ),
        chunk=st.integers(min_value=1, max_value=64),
    )
    def test_arbitrary_bytes_never_raise_nor_hang(self, data: bytes, chunk: int) -> None:
        parser = AmiParser(max_block_size=1024)
        started = time.perf_counter()

        messages = []
        for position in range(0, len(data), chunk):
            messages += parser.feed(data[position : position + chunk])

        assert time.perf_counter() - started < 1.0
        assert all(isinstance(m, Event | Response | Action) for m in messages)
        assert parser.buffered <= 1024 + chunk
        for message in messages:
            message.encode()
            message.to_dict()

    @settings(max_examples=200, deadline=1000)
    @given(cuts=st.lists(st.integers(min_value=0, max_value=len(_SAMPLE)), max_size=40))
    def test_any_chunking_of_a_valid_stream_gives_the_same_messages(self, cuts: list[int]) -> None:
        points = sorted(set(cuts))
        sizes = [b - a for a, b in zip([0, *points], points, strict=False)]

        messages, parser = _feed_in_chunks(_SAMPLE, sizes)

        assert messages == _SAMPLE_MESSAGES
        assert parser.buffered == 0

    @settings(max_examples=200, deadline=1000)
    @given(
        headers=st.lists(
            st.tuples(
                st.from_regex(r"\A[A-Za-z][A-Za-z0-9()/_-]{0,15}\Z"),
                st.text(
                    st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"),
                    max_size=30,
                ),
            ),
            min_size=1,
            max_size=10,
        ),
        chunk=st.integers(min_value=1, max_value=50),
    )
    def test_encoded_messages_parse_back(self, headers: list[tuple[str, str]], chunk: int) -> None:
        original = Event([("Event", "Fuzz"), *headers])
        data = original.encode() * 3

        parser = AmiParser(expect_banner=False)
        messages = []
        for position in range(0, len(data), chunk):
            messages += parser.feed(data[position : position + chunk])

        assert messages == [original] * 3


class TestFastFraming:
    @settings(max_examples=300, deadline=1000)
    @given(
        st.lists(
            st.sampled_from([*"\r\n:x ", "\r\n", "A: 1", "Event: X", "Response: Y"]), max_size=80
        )
    )
    def test_same_messages_as_splitting_on_the_regex(self, pieces: list[str]) -> None:
        text = "".join(pieces) + "\r\n\r\n"

        parsed = AmiParser(expect_banner=False).feed(text.encode())
        blocks = re.split(r"\r?\n\r?\n", text)
        reference = [Message.from_block(b) for b in blocks]

        assert parsed == [m for m in reference if isinstance(m, Event | Response | Action)]

    @settings(max_examples=300, deadline=1000)
    @given(
        lines=st.lists(
            st.sampled_from(
                [
                    "Variable: A",
                    "variable:B",
                    "VARIABLE:  C",
                    "Variable:",
                    "Value: x",
                    "bad",
                    ": no key",
                    "Variable",
                    "Var: iable",
                    " Variable: D",
                    "Variable: E: F",
                ]
            ),
            max_size=8,
        ),
        key=st.sampled_from(
            [
                "Variable",
                "VARIABLE",
                "Value",
                "Var",
                " Variable",
                "Event",
                "Missing",
                "",
                " ",
                "Variable: E",
                "A\nVariable",
            ]
        ),
    )
    def test_peek_finds_what_get_finds(self, lines: list[str], key: str) -> None:
        block = "\r\n".join(["Event: VarSet", *lines]).encode()

        peeked = Message.from_block(block).peek(key)

        assert peeked == Message.from_block(block).get(key)

    def test_peek_leaves_the_event_unparsed(self) -> None:
        event = Message.from_block(b"Event: VarSet\r\nChannel: PJSIP/1\r\nVariable: X\r\n")

        assert event.peek("variable") == "X"
        assert event._items_cache is None  # nothing parsed yet
        assert event.get("Channel") == "PJSIP/1"
        assert event.peek("Variable") == "X"

    def test_lazy_events_equal_eager_ones(self) -> None:
        lazy = Message.from_block(b"Event: X\r\nA: 1\r\nbad\r\nB:2")
        eager = Event([("Event", "X"), ("A", "1"), ("B", "2")], unparsed=["bad"])

        assert lazy.name == "X"
        assert lazy == eager
        assert hash(lazy) == hash(eager)
        assert lazy.unparsed == ("bad",)
