"""Originate for click-to-call: the action's headers, and one send whatever the PBX does."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from callbridge.domain.events import CallStarted
from callbridge.pbx.ami.listener import AmiUrl
from callbridge.pbx.ami.originate import (
    OriginateOutcome,
    OriginateRequest,
    originate,
    originate_headers,
    originate_settings,
)
from callbridge.pbx.ami.protocol import Event
from callbridge.pbx.ami.translate import AmiTranslator
from tests.callbridge.pbx.ami.conftest import ClientFactory, ServerFactory, stream

REQUEST = OriginateRequest(extension="101", number="+74951234567", bitrix24_call_id="ext.1")


def url(port: int) -> AmiUrl:
    return AmiUrl.parse(f"ami://crm:crm-secret@127.0.0.1:{port}")


class TestHeaders:
    def test_click_to_call(self) -> None:
        headers = originate_headers(REQUEST)
        assert headers == {
            "Channel": "PJSIP/101",
            "Context": "from-internal",
            "Exten": "+74951234567",
            "Priority": "1",
            "CallerID": '"+74951234567" <+74951234567>',
            "Timeout": "30000",
            "Async": "true",
            "Variable": ["CALLBRIDGE_B24_CALL_ID=ext.1"],
        }

    def test_callback_and_a_custom_channel(self) -> None:
        channel, context = originate_settings({"ami": {"originate_channel": "SIP/{extension}"}})
        assert (channel, context) == ("SIP/{extension}", "from-internal")
        channel, context = originate_settings({"ami.originate_context": "office"})
        assert (channel, context) == ("PJSIP/{extension}", "office")
        request = OriginateRequest(
            extension="101", number="123", callback=True, channel_pattern="SIP"
        )
        headers = originate_headers(request)
        assert headers["Channel"] == "SIP/101"
        assert headers["Variable"] == ["CALLBRIDGE_CALLBACK=1"]


class TestSend:
    async def test_success_is_queued(self, replay_server: ServerFactory) -> None:
        server = await replay_server()
        result = await originate(url(server.port), REQUEST)
        assert result.outcome is OriginateOutcome.QUEUED
        (sent,) = server.originates
        assert sent["Channel"] == "PJSIP/101"

    async def test_error_is_refused(self, replay_server: ServerFactory) -> None:
        server = await replay_server(originate_mode="failure")
        result = await originate(url(server.port), REQUEST)
        assert result.outcome is OriginateOutcome.REFUSED
        assert len(server.originates) == 1

    @pytest.mark.parametrize("mode", ["drop", "silent"])
    async def test_no_answer_is_unknown_and_never_resent(
        self, replay_server: ServerFactory, mode: str
    ) -> None:
        server = await replay_server(originate_mode=mode)
        result = await originate(url(server.port), REQUEST, response_timeout=0.5)
        assert result.outcome is OriginateOutcome.UNKNOWN
        assert len(server.originates) == 1

    async def test_unreachable_pbx_is_refused(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        result = await originate(url(port), REQUEST, connect_timeout=1.0)
        assert result.outcome is OriginateOutcome.REFUSED
        assert "cannot reach" in result.detail

    async def test_wrong_secret_is_refused(self, replay_server: ServerFactory) -> None:
        server = await replay_server()
        bad = AmiUrl.parse(f"ami://crm:wrong@127.0.0.1:{server.port}")
        result = await originate(bad, REQUEST)
        assert result.outcome is OriginateOutcome.REFUSED
        assert server.originates == []


class TestThroughTheTranslator:
    async def test_the_originated_call_carries_the_bitrix24_call_id(
        self, replay_server: ServerFactory, ami_client: ClientFactory
    ) -> None:
        server = await replay_server(originate_file=stream("h_click2call_outbound"))
        listener = ami_client(server)
        await listener.connect()
        result = await originate(url(server.port), REQUEST)
        assert result.outcome is OriginateOutcome.QUEUED
        events: list[Event] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                async for event in listener:
                    events.append(event)
                    if event.name == "Hangup" and event.get("Linkedid") == event.get("Uniqueid"):
                        break
        facts = AmiTranslator().feed_all(events)
        (started,) = [fact for fact in facts if isinstance(fact, CallStarted)]
        assert started.bitrix24_call_id == "ext.1"
        assert len(server.originates) == 1
