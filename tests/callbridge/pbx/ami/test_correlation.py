"""Routing responses and list events to pending actions by ActionID."""

from __future__ import annotations

import asyncio

import pytest

from callbridge.pbx.ami.correlation import Correlator, ListResult
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


class TestInStreamList:
    """A list asked ``in_stream`` is an event too, at the place of its response."""

    @staticmethod
    def _route(correlator: Correlator, data: str) -> list[Event]:
        delivered: list[Event] = []
        for message in _messages(data):
            event = correlator.feed(message)
            if event is not None:
                delivered.append(event)
            delivered.extend(correlator.take_released())
        return delivered

    async def test_the_list_comes_between_older_and_newer_events(self) -> None:
        correlator = Correlator()
        channels = correlator.register("CoreShowChannels", "t-1", collect=True, in_stream=True)

        delivered = self._route(
            correlator,
            "Event: Newchannel\nUniqueid: 1.0\n\n"
            "Response: Success\nActionID: t-1\nEventList: start\n\n"
            "Event: CoreShowChannel\nActionID: t-1\nUniqueid: 1.0\n\n"
            # Sent while the list was arriving: newer than the list, so after it.
            "Event: Newstate\nUniqueid: 1.0\n\n"
            "Event: CoreShowChannel\nActionID: t-1\nUniqueid: 2.0\n\n"
            "Event: CoreShowChannelsComplete\nActionID: t-1\nEventList: Complete\n\n"
            "Event: Hangup\nUniqueid: 1.0\n\n",
        )

        assert [e.name for e in delivered] == [
            "Newchannel",
            "CallbridgeListResult",
            "Newstate",
            "Hangup",
        ]
        marker = delivered[1]
        assert isinstance(marker, ListResult)
        assert (marker.action, marker.action_id) == ("CoreShowChannels", "t-1")
        assert [e["Uniqueid"] for e in marker.events] == ["1.0", "2.0"]
        assert (await channels).events == marker.events
        assert len(correlator) == 0

    async def test_a_list_not_asked_in_stream_is_not_in_the_stream(self) -> None:
        correlator = Correlator()
        correlator.register("CoreShowChannels", "t-1", collect=True)

        delivered = self._route(
            correlator,
            "Response: Success\nActionID: t-1\nEventList: start\n\n"
            "Event: Newstate\nUniqueid: 1.0\n\n"
            "Event: CoreShowChannelsComplete\nActionID: t-1\nEventList: Complete\n\n",
        )

        assert [e.name for e in delivered] == ["Newstate"]

    async def test_a_refused_list_holds_nothing_back(self) -> None:
        correlator = Correlator()
        future = correlator.register("CoreShowChannels", "t-1", collect=True, in_stream=True)

        delivered = self._route(
            correlator,
            "Response: Error\nActionID: t-1\nMessage: Permission denied\n\n"
            "Event: Newstate\nUniqueid: 1.0\n\n",
        )

        assert [e.name for e in delivered] == ["Newstate"]
        assert not (await future).response.success

    async def test_events_held_behind_a_list_that_stops_are_released_in_order(self) -> None:
        correlator = Correlator()
        correlator.register("CoreShowChannels", "t-1", collect=True, in_stream=True)
        second = correlator.register("CoreShowChannels", "t-2", collect=True, in_stream=True)
        data = (
            "Response: Success\nActionID: t-1\nEventList: start\n\n"
            "Event: Newchannel\nUniqueid: 1.0\n\n"
            "Response: Success\nActionID: t-2\nEventList: start\n\n"
            "Event: Newstate\nUniqueid: 1.0\n\n"
            "Event: CoreShowChannelsComplete\nActionID: t-2\nEventList: Complete\n\n"
        )

        # The second list is complete, but behind the first, which is not: all wait.
        assert self._route(correlator, data) == []
        # The first is given up (timed out): what waited behind it goes, the second list
        # at its place.
        correlator.discard("t-1")
        released = correlator.take_released()

        assert [e.name for e in released] == [
            "Newchannel",
            "CallbridgeListResult",
            "Newstate",
        ]
        assert isinstance(released[1], ListResult)
        assert released[1].action_id == "t-2"
        assert (await second).events == ()

    async def test_a_dropped_connection_releases_what_was_held(self) -> None:
        correlator = Correlator()
        future = correlator.register("CoreShowChannels", "t-1", collect=True, in_stream=True)
        held = self._route(
            correlator,
            "Response: Success\nActionID: t-1\nEventList: start\n\n"
            "Event: Newchannel\nUniqueid: 1.0\n\n",
        )

        failed = correlator.fail_all(
            lambda action, action_id: AmiConnectionLost(action=action, action_id=action_id)
        )

        assert (held, failed) == ([], 1)
        assert [e.name for e in correlator.take_released()] == ["Newchannel"]
        with pytest.raises(AmiConnectionLost):
            await future
