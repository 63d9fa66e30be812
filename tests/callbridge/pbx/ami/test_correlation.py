"""Routing responses and list events to pending actions by ActionID."""

from __future__ import annotations

import asyncio

import pytest

from callbridge.pbx.ami.correlation import Correlator
from callbridge.pbx.ami.errors import AmiConnectionLost
from callbridge.pbx.ami.protocol import AmiParser, Event, Message


def _messages(data: str) -> list[Message]:
    return AmiParser(expect_banner=False).feed(data.replace("\n", "\r\n").encode())


class TestCorrelator:
    async def test_responses_by_action_id_with_interleaved_events(self) -> None:
        correlator = Correlator()
        ping = correlator.register("Ping", "t-1")
        status = correlator.register("Status", "t-2")

        delivered = [
            correlator.feed(m)
            for m in _messages(
                "Event: Newchannel\nUniqueid: 1.0\n\n"
                "Response: Success\nActionID: t-2\nMessage: ok\n\n"
                "Event: Hangup\nUniqueid: 1.0\n\n"
                "Response: Success\nActionID: t-1\nPing: Pong\n\n"
            )
        ]

        assert [e.name for e in delivered if e is not None] == ["Newchannel", "Hangup"]
        assert (await ping).response["Ping"] == "Pong"
        assert (await status).response.message == "ok"
        assert len(correlator) == 0

    async def test_event_list_is_collected_until_complete(self) -> None:
        correlator = Correlator()
        channels = correlator.register("CoreShowChannels", "t-1", collect=True)

        delivered = [
            correlator.feed(m)
            for m in _messages(
                "Response: Success\nActionID: t-1\nEventList: start\n\n"
                "Event: CoreShowChannel\nActionID: t-1\nChannel: PJSIP/101-1\n\n"
                "Event: Newstate\nChannel: PJSIP/102-2\n\n"
                "Event: CoreShowChannel\nActionID: t-1\nChannel: PJSIP/trunk-0\n\n"
                "Event: CoreShowChannelsComplete\nActionID: t-1\nEventList: Complete\n"
                "ListItems: 2\n\n"
            )
        ]

        result = await channels
        assert [e["Channel"] for e in result.events] == ["PJSIP/101-1", "PJSIP/trunk-0"]
        assert result.response.starts_event_list
        assert [e.name for e in delivered if e is not None] == ["Newstate"]

    async def test_list_action_refused_resolves_at_once(self) -> None:
        correlator = Correlator()
        future = correlator.register("QueueStatus", "t-1", collect=True)

        for message in _messages("Response: Error\nActionID: t-1\nMessage: Permission denied\n\n"):
            correlator.feed(message)

        result = await future
        assert not result.response.success
        assert result.events == ()

    async def test_events_with_an_unknown_action_id_are_events(self) -> None:
        correlator = Correlator()

        [message] = _messages("Event: OriginateResponse\nActionID: other-1\nResponse: Success\n\n")

        assert isinstance(correlator.feed(message), Event)

    async def test_unmatched_and_late_responses_are_counted_and_dropped(self) -> None:
        correlator = Correlator()
        future = correlator.register("Ping", "t-1")
        correlator.discard("t-1")

        for message in _messages("Response: Success\nActionID: t-1\n\nResponse: Success\n\n"):
            assert correlator.feed(message) is None

        assert future.cancelled()
        assert correlator.unmatched == 2

    async def test_fail_all_fails_every_pending_action(self) -> None:
        correlator = Correlator()
        first = correlator.register("Originate", "t-1")
        second = correlator.register("CoreShowChannels", "t-2", collect=True)

        failed = correlator.fail_all(
            lambda action, action_id: AmiConnectionLost(action=action, action_id=action_id)
        )

        assert failed == 2
        for future, action in ((first, "Originate"), (second, "CoreShowChannels")):
            with pytest.raises(AmiConnectionLost) as caught:
                await future
            assert caught.value.action == action
        assert len(correlator) == 0

    async def test_an_action_id_in_flight_cannot_be_reused(self) -> None:
        correlator = Correlator()
        correlator.register("Ping", "t-1")

        with pytest.raises(ValueError, match="already in flight"):
            correlator.register("Ping", "t-1")

    async def test_futures_belong_to_the_running_loop(self) -> None:
        correlator = Correlator()

        future = correlator.register("Ping", "t-1")

        assert future.get_loop() is asyncio.get_running_loop()
