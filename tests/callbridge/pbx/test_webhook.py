"""The webhook contract v1: each event's schema, its conversion to domain facts, and auth."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from callbridge.domain import events as domain
from callbridge.pbx.webhook import (
    MAX_EVENTS_PER_REQUEST,
    WebhookVerifier,
    parse_events,
    parse_events_json,
    sign,
)

MSK = timezone(timedelta(hours=3))
BASE = {"call_id": "1764151200.42", "event_id": "ev-1", "timestamp": "2026-11-26T10:00:00+03:00"}
WHEN = datetime(2026, 11, 26, 10, 0, tzinfo=MSK)


def one(type_: str, **fields: Any) -> domain.Event:
    (event,) = parse_events({"type": type_, **BASE, **fields})
    return event.to_domain()


def problems(data: Any) -> dict[tuple[Any, ...], str]:
    with pytest.raises(ValidationError) as info:
        parse_events(data)
    return {tuple(error["loc"]): error["msg"] for error in info.value.errors()}


class TestEvents:
    def test_started_inbound(self) -> None:
        event = one(
            "call.started", direction="inbound", external_number="84951234567", line="4951110101"
        )
        assert event == domain.CallStarted(
            call_id=BASE["call_id"],
            event_id="ev-1",
            timestamp=WHEN,
            direction=domain.Direction.INBOUND,
            external_number="84951234567",
            line="4951110101",
        )

    def test_started_anonymous_caller(self) -> None:
        event = one("call.started", direction="inbound", external_number="", extension="")
        assert isinstance(event, domain.CallStarted)
        assert (event.external_number, event.extension) == ("", None)

    def test_started_outbound_needs_the_caller(self) -> None:
        found = problems({"type": "call.started", **BASE, "direction": "outbound"})
        assert "extension is required for outbound calls" in next(iter(found.values()))

    def test_started_click_to_call(self) -> None:
        event = one(
            "call.started",
            direction="outbound",
            extension="101",
            external_number="+74951234567",
            bitrix24_call_id="externalCall.abc",
        )
        assert isinstance(event, domain.CallStarted)
        assert event.bitrix24_call_id == "externalCall.abc"

    def test_ringing_list_or_string(self) -> None:
        assert one("call.ringing", extensions=["101", "102"]) == one(
            "call.ringing", extensions="101&102"
        )
        assert one("call.ringing", extensions="101, 102") == one(
            "call.ringing", extensions=["102", "101"]
        )
        nobody = one("call.ringing", extensions=[])
        assert isinstance(nobody, domain.Ringing)
        assert nobody.extensions == frozenset()

    def test_answered(self) -> None:
        event = one("call.answered", extension="102")
        assert isinstance(event, domain.Answered)
        assert event.extension == "102"
        anonymous = one("call.answered")
        assert isinstance(anonymous, domain.Answered)
        assert anonymous.extension is None

    def test_transferred(self) -> None:
        event = one("call.transferred", kind="attended", from_extension="101", to_extension="102")
        assert isinstance(event, domain.Transferred)
        assert (event.kind, event.to_extension) == (domain.TransferKind.ATTENDED, "102")
        outside = one("call.transferred", kind="blind", to_number="+79161234567")
        assert isinstance(outside, domain.Transferred)
        assert outside.to_number == "+79161234567"

    @pytest.mark.parametrize(
        "targets", [{}, {"to_extension": "102", "to_number": "+79161234567"}, {"to_number": ""}]
    )
    def test_transferred_needs_exactly_one_target(self, targets: dict[str, str]) -> None:
        found = problems({"type": "call.transferred", **BASE, "kind": "blind", **targets})
        assert any("exactly one of to_extension, to_number" in msg for msg in found.values())

    def test_leg_ended(self) -> None:
        event = one("call.leg_ended", extension="101", disposition="BUSY", hangup_cause="17")
        assert event == domain.LegEnded(
            call_id=BASE["call_id"],
            event_id="ev-1",
            timestamp=WHEN,
            extension="101",
            disposition=domain.Disposition.BUSY,
            hangup_cause=17,
        )

    def test_ended(self) -> None:
        event = one(
            "call.ended",
            disposition="answered",
            hangup_cause=16,
            talk_seconds="42",
            vote=5,
            cost=1.5,
            cost_currency="rub",
        )
        assert isinstance(event, domain.Ended)
        assert (event.talk_seconds, event.vote, event.cost, event.cost_currency) == (
            42,
            5,
            1.5,
            "RUB",
        )

    @pytest.mark.parametrize(
        ("dialstatus", "disposition"),
        [
            ("ANSWER", "answered"),
            ("NOANSWER", "no_answer"),
            ("BUSY", "busy"),
            ("CANCEL", "cancelled"),
            ("CHANUNAVAIL", "failed"),
            ("CONGESTION", "failed"),
            ("no_answer", "no_answer"),
        ],
    )
    def test_ended_takes_dialstatus(self, dialstatus: str, disposition: str) -> None:
        event = one("call.ended", disposition=dialstatus, talk_seconds="")
        assert isinstance(event, domain.Ended)
        assert event.disposition.value == disposition
        assert event.talk_seconds is None

    @pytest.mark.parametrize(
        ("type_", "dialstatus", "given", "cause"),
        [
            ("call.ended", "CONGESTION", None, 34),
            ("call.ended", "CHANUNAVAIL", "", 20),
            ("call.ended", "BUSY", None, 17),
            ("call.ended", "CHANUNAVAIL", "18", 18),  # the PBX's own cause wins
            ("call.ended", "NOANSWER", None, None),
            ("call.ended", "failed", None, None),  # our word implies nothing
            ("call.leg_ended", "CHANUNAVAIL", None, 20),
        ],
    )
    def test_dialstatus_brings_the_cause_it_implies(
        self, type_: str, dialstatus: str, given: str | None, cause: int | None
    ) -> None:
        fields: dict[str, Any] = {"disposition": dialstatus}
        if type_ == "call.leg_ended":
            fields["extension"] = "101"
        if given is not None:
            fields["hangup_cause"] = given
        event = one(type_, **fields)
        assert isinstance(event, domain.Ended | domain.LegEnded)
        assert event.hangup_cause == cause

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("disposition", "exploded"),
            ("hangup_cause", 300),
            ("talk_seconds", -1),
            ("vote", 6),
            ("cost", -1),
            ("cost_currency", "roubles"),
        ],
    )
    def test_ended_bad_fields(self, field: str, value: Any) -> None:
        data = {"type": "call.ended", **BASE, "disposition": "answered", field: value}
        assert list(problems(data)) == [(0, "call.ended", field)]

    def test_recording(self) -> None:
        event = one("call.recording", path="/var/spool/asterisk/monitor/1764151200.42.WAV")
        assert isinstance(event, domain.RecordingReady)
        assert (event.format, event.url) == ("wav", None)
        remote = one("call.recording", url="https://pbx.example/rec/1.mp3?sig=x", extension="101")
        assert isinstance(remote, domain.RecordingReady)
        assert (remote.format, remote.extension) == ("mp3", "101")
        explicit = one("call.recording", path="/rec/abc", format="wav")
        assert isinstance(explicit, domain.RecordingReady)
        assert explicit.format == "wav"

    @pytest.mark.parametrize(
        ("fields", "reason"),
        [
            ({}, "give a path or a url"),
            ({"path": "/rec/abc"}, "give format"),
            ({"url": "ftp://pbx/rec.wav"}, "should match pattern"),
        ],
    )
    def test_recording_bad(self, fields: dict[str, str], reason: str) -> None:
        found = problems({"type": "call.recording", **BASE, **fields})
        assert any(reason in msg for msg in found.values())


class TestCommonFields:
    @pytest.mark.parametrize(
        "stamp",
        [
            "2026-11-26T10:00:00+03:00",
            "2026-11-26T10:00:00+0300",
            "2026-11-26T07:00:00Z",
            "2026-11-26T07:00:00.000Z",
        ],
    )
    def test_timestamp_spellings(self, stamp: str) -> None:
        (parsed,) = parse_events({"type": "call.answered", **{**BASE, "timestamp": stamp}})
        assert parsed.timestamp == WHEN

    def test_unix_timestamp(self) -> None:
        (parsed,) = parse_events(
            {"type": "call.answered", **{**BASE, "timestamp": int(WHEN.timestamp())}}
        )
        assert parsed.timestamp == datetime(2026, 11, 26, 7, 0, tzinfo=UTC)

    def test_naive_timestamp_is_refused(self) -> None:
        found = problems({"type": "call.answered", **{**BASE, "timestamp": "2026-11-26T10:00:00"}})
        assert found == {(0, "call.answered", "timestamp"): "Input should have timezone info"}

    @pytest.mark.parametrize("field", ["call_id", "event_id", "timestamp"])
    def test_required(self, field: str) -> None:
        data = {"type": "call.answered", **BASE}
        del data[field]
        assert problems(data) == {(0, "call.answered", field): "Field required"}

    def test_blank_ids_are_refused(self) -> None:
        found = problems({"type": "call.answered", **{**BASE, "call_id": "  "}})
        assert list(found) == [(0, "call.answered", "call_id")]

    def test_unknown_fields_are_refused(self) -> None:
        found = problems({"type": "call.answered", **BASE, "extenson": "101"})
        assert found == {(0, "call.answered", "extenson"): "Extra inputs are not permitted"}

    def test_unknown_type(self) -> None:
        (loc,) = problems({"type": "call.exploded", **BASE})
        assert loc == (0,)

    def test_batches(self) -> None:
        events = [{"type": "call.answered", **{**BASE, "event_id": f"e{i}"}} for i in range(3)]
        assert [e.event_id for e in parse_events(events)] == ["e0", "e1", "e2"]
        assert (
            len(
                parse_events_json(
                    b'{"type": "call.answered", "call_id": "1", "event_id": "x", "timestamp": 0}'
                )
            )
            == 1
        )
        too_many = [events[0]] * (MAX_EVENTS_PER_REQUEST + 1)
        assert list(problems(too_many)) == [()]
        assert list(problems([])) == [()]


class TestVerifier:
    NOW = 1_764_140_400.0
    verifier = WebhookVerifier(replay_window_seconds=300, clock=lambda: TestVerifier.NOW)

    def signed(self, secret: str, body: bytes, stamp: float) -> dict[str, str]:
        text = str(int(stamp))
        return {"x-callbridge-timestamp": text, "x-callbridge-signature": sign(secret, text, body)}

    def test_bearer(self) -> None:
        assert self.verifier("s3cret", {"authorization": "Bearer s3cret"}, b"")
        assert self.verifier("s3cret", {"Authorization": "bearer  s3cret "}, b"")
        assert not self.verifier("s3cret", {"authorization": "Bearer s3cre"}, b"")
        assert not self.verifier("s3cret", {"authorization": "Basic s3cret"}, b"")
        assert not self.verifier("s3cret", {}, b"")

    def test_unknown_enterprise_never_verifies(self) -> None:
        assert not self.verifier(None, {"authorization": "Bearer "}, b"")
        assert not self.verifier("", {"authorization": "Bearer "}, b"")

    def test_signature(self) -> None:
        body = b'{"type": "call.answered"}'
        assert self.verifier("s3cret", self.signed("s3cret", body, self.NOW), body)
        assert self.verifier("s3cret", self.signed("s3cret", body, self.NOW - 299), body)
        assert self.verifier("s3cret", self.signed("s3cret", body, self.NOW + 299), body)

    def test_signature_outside_the_window(self) -> None:
        body = b"{}"
        assert not self.verifier("s3cret", self.signed("s3cret", body, self.NOW - 301), body)
        assert not self.verifier("s3cret", self.signed("s3cret", body, self.NOW + 301), body)

    def test_signature_of_another_body_or_key(self) -> None:
        headers = self.signed("s3cret", b"{}", self.NOW)
        assert not self.verifier("s3cret", headers, b"[]")
        assert not self.verifier("other", headers, b"{}")

    def test_signature_needs_a_timestamp(self) -> None:
        body = b"{}"
        headers = {"x-callbridge-signature": sign("s3cret", "", body)}
        assert not self.verifier("s3cret", headers, body)
        headers = {
            "x-callbridge-timestamp": "soon",
            "x-callbridge-signature": sign("s3cret", "soon", body),
        }
        assert not self.verifier("s3cret", headers, body)

    def test_a_signature_header_wins_over_a_bearer_token(self) -> None:
        # A request that signs is judged by its signature alone.
        headers = {"authorization": "Bearer s3cret", "x-callbridge-signature": "sha256=00"}
        assert not self.verifier("s3cret", headers, b"{}")

    def test_sign_matches_openssl(self) -> None:
        # printf '%s' '1764140400.{}' | openssl dgst -sha256 -hmac s3cret
        expected = hmac.new(b"s3cret", b"1764140400.{}", hashlib.sha256).hexdigest()
        assert sign("s3cret", "1764140400", b"{}") == f"sha256={expected}"
