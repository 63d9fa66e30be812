"""Planning click-to-call and callbacks: repeats, staleness, extensions, failure commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from callbridge.services.click_to_call import (
    Drop,
    Fail,
    Originate,
    PbxCandidate,
    PhoneRequest,
    choose_pbx,
    failure_commands,
    failure_message,
    is_repeat,
    is_stale,
    plan,
)

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
PBX = PbxCandidate(enterprise_id=7, has_ami=True)


def request(**data: Any) -> PhoneRequest:
    fields = {"CALL_ID": "externalCall.1", "USER_ID": "5", "PHONE_NUMBER": "+74951234567"}
    ts = data.pop("ts", int(NOW.timestamp()))
    return PhoneRequest.from_payload(
        "click_to_call", {"data": fields | data, "ts": str(ts) if ts is not None else ""}
    )


def plan_for(req: PhoneRequest, **overrides: Any) -> Originate | Drop | Fail:
    values: dict[str, Any] = {
        "now": NOW,
        "received_at": NOW,
        "earlier": [],
        "extensions": {5: "101"},
        "candidates": [PBX],
    }
    return plan(req, **(values | overrides))


class TestPayload:
    def test_reads_the_portal_fields(self) -> None:
        req = request(CRM_ENTITY_TYPE="CONTACT", CRM_ENTITY_ID="12", LINE_NUMBER="74950000000")
        assert req.call_id == "externalCall.1"
        assert req.user_id == 5
        assert req.phone == "+74951234567"
        assert (req.crm_entity_type, req.crm_entity_id) == ("CONTACT", 12)
        assert req.sent_at == NOW

    def test_garbage_numbers_are_zero(self) -> None:
        req = request(USER_ID="x", ts="soon")
        assert req.user_id == 0
        assert req.sent_at is None


class TestRepeats:
    def test_same_call_id_within_window_is_a_repeat(self) -> None:
        earlier = [(request(), NOW - timedelta(seconds=4))]
        assert is_repeat(request(), NOW, earlier)
        assert isinstance(plan_for(request(), earlier=earlier), Drop)

    def test_same_user_and_number_is_a_repeat_even_with_a_new_call_id(self) -> None:
        earlier = [(request(CALL_ID="externalCall.2", PHONE_NUMBER="8 (495) 123-45-67"), NOW)]
        assert not is_repeat(request(PHONE_NUMBER="+7 495 123-45-68"), NOW, earlier)
        earlier = [(request(CALL_ID="externalCall.2"), NOW - timedelta(seconds=1))]
        assert is_repeat(request(), NOW, earlier)

    def test_after_the_window_it_is_a_new_call(self) -> None:
        earlier = [(request(), NOW - timedelta(seconds=6))]
        assert not is_repeat(request(), NOW, earlier)
        assert isinstance(plan_for(request(), earlier=earlier), Originate)

    def test_another_user_is_not_a_repeat(self) -> None:
        earlier = [(request(CALL_ID="externalCall.2", USER_ID="6"), NOW)]
        assert not is_repeat(request(), NOW, earlier)


class TestStaleness:
    def test_older_than_30_s_is_dropped(self) -> None:
        old = request(ts=int(NOW.timestamp()) - 31)
        assert is_stale(old, NOW)
        decision = plan_for(old)
        assert isinstance(decision, Drop)
        assert "stale" in decision.reason

    def test_recent_or_unknown_age_goes_ahead(self) -> None:
        assert not is_stale(request(ts=int(NOW.timestamp()) - 29), NOW)
        assert not is_stale(request(ts=None), NOW)


class TestExtensions:
    def test_originates_from_the_users_extension(self) -> None:
        decision = plan_for(request())
        assert decision == Originate(
            enterprise_id=7,
            extension="101",
            number="+74951234567",
            user_id=5,
            bitrix24_call_id="externalCall.1",
            callback=False,
            channel_pattern="PJSIP/{extension}",
            context="from-internal",
        )

    def test_unknown_extension_fails(self) -> None:
        decision = plan_for(request(), extensions={6: "102"})
        assert decision == Fail("unknown_extension", 5)

    def test_no_pbx_or_no_ami_fails(self) -> None:
        assert plan_for(request(), candidates=[]) == Fail("no_pbx", 5)
        no_ami = PbxCandidate(enterprise_id=7, has_ami=False)
        assert plan_for(request(), candidates=[no_ami]) == Fail("no_ami", 5)

    def test_several_pbxs_choose_by_extension(self) -> None:
        a = PbxCandidate(enterprise_id=1, has_ami=True, extensions=frozenset({"100"}))
        b = PbxCandidate(enterprise_id=2, has_ami=True, extensions=frozenset({"101"}))
        assert choose_pbx([a, b], "101") is b
        assert choose_pbx([a, b], "999") is None
        open_ended = PbxCandidate(enterprise_id=3, has_ami=True)
        assert choose_pbx([a, open_ended], "999") is open_ended
        decision = plan_for(request(), candidates=[a, b])
        assert isinstance(decision, Originate)
        assert decision.enterprise_id == 2


class TestCallback:
    def callback(self) -> PhoneRequest:
        return PhoneRequest.from_payload(
            "callback", {"data": {"PHONE_NUMBER": "+74951234567"}, "ts": ""}
        )

    def test_rings_the_responsible_user(self) -> None:
        decision = plan_for(self.callback(), responsible_user=5)
        assert isinstance(decision, Originate)
        assert (decision.extension, decision.callback, decision.bitrix24_call_id) == (
            "101",
            True,
            None,
        )

    def test_default_user_without_a_responsible_one(self) -> None:
        decision = plan_for(self.callback(), extensions={1: "100"})
        assert isinstance(decision, Originate)
        assert decision.extension == "100"

    def test_queue_wins_through_a_local_channel(self) -> None:
        decision = plan_for(self.callback(), callback_queue="600", responsible_user=5)
        assert isinstance(decision, Originate)
        assert decision.extension == "600"
        assert decision.channel_pattern == "Local/{extension}@from-internal"


class TestFailureCommands:
    def test_finish_then_notify(self) -> None:
        (finish, notify) = failure_commands(request(), Fail("refused", 5, "busy"), "ru")
        assert finish == (
            "telephony.externalCall.finish",
            {
                "CALL_ID": "externalCall.1",
                "USER_ID": 5,
                "DURATION": 0,
                "STATUS_CODE": "603-S",
                "FAILED_REASON": "busy",
            },
        )
        method, params = notify
        assert method == "im.notify"
        assert params["USER_ID"] == 5
        expected = "Не удалось позвонить на +74951234567: АТС отклонила вызов"  # noqa: RUF001
        assert params["MESSAGE"] == expected

    def test_unknown_extension_is_other(self) -> None:
        (finish, _) = failure_commands(request(), Fail("unknown_extension", 5), "en")
        assert finish[1]["STATUS_CODE"] == "OTHER"

    def test_english_per_setting(self) -> None:
        message = failure_message(request(), "no_ami", "en")
        assert message == "Could not call +74951234567: the PBX has no AMI connection configured"

    def test_callback_has_nothing_to_finish(self) -> None:
        req = PhoneRequest.from_payload("callback", {"data": {"PHONE_NUMBER": "123"}})
        commands = failure_commands(req, Fail("no_pbx", 3), "en")
        assert [method for method, _ in commands] == ["im.notify"]
