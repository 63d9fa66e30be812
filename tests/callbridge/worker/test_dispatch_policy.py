"""The dispatcher's scheduling policy: critical commands at once, bulk ones linger, a reserve."""

from __future__ import annotations

import pytest

from callbridge.worker.dispatch_policy import BucketMirror, Held, Tuning, decide, is_critical

METHOD = {
    "register": "telephony.externalCall.register",
    "show": "telephony.externalCall.show",
    "hide": "telephony.externalCall.hide",
    "finish": "telephony.externalCall.finish",
    "attach_record": "telephony.externalCall.attachRecord",
}
TUNING = Tuning(linger=1.0, reserve=10, max_batch=50)
FULL = 45.0  # the standard plan's bucket, client side, idle


def held(job_id: int, kind: str, call: int = 1, since: float = 0.0) -> Held:
    return Held(job_id, f"call:{call}", kind, METHOD[kind], since)


class TestKinds:
    def test_register_and_show_are_critical_the_rest_bulk(self) -> None:
        assert [k for k in METHOD if is_critical(k)] == ["register", "show"]


class TestCritical:
    def test_a_register_goes_at_once_alone(self) -> None:
        decision = decide([held(1, "register")], 0.0, FULL, TUNING)
        assert decision.send == (1,)
        assert decision.critical

    def test_a_register_goes_even_when_only_the_reserve_is_left(self) -> None:
        decision = decide([held(1, "register")], 0.0, 1.0, TUNING)
        assert decision.send == (1,)

    def test_lingering_bulk_commands_ride_along_after_the_critical_call(self) -> None:
        items = [held(1, "finish", call=1), held(2, "hide", call=2), held(3, "register", call=3)]
        decision = decide(items, 0.1, FULL, TUNING)
        # The register's call first, so a failing rider (halt=1) never holds it back.
        assert decision.send == (3, 1, 2)

    def test_a_critical_command_takes_the_earlier_commands_of_its_call_first(self) -> None:
        items = [held(5, "hide", call=1), held(6, "show", call=1), held(7, "finish", call=2)]
        decision = decide(items, 0.0, FULL, TUNING)
        assert decision.send == (5, 6, 7)

    def test_the_batch_is_cut_to_max_batch_keeping_order(self) -> None:
        items = [held(i, "register", call=i) for i in range(1, 4)]
        items += [held(10, "finish", call=9), held(11, "attach_record", call=9)]
        decision = decide(items, 0.0, FULL, Tuning(max_batch=4))
        assert decision.send == (1, 2, 3, 10)


class TestBulk:
    def test_a_finish_lingers_for_company(self) -> None:
        decision = decide([held(1, "finish", since=10.0)], 10.2, FULL, TUNING)
        assert decision.send == ()
        assert decision.wake_at == pytest.approx(11.0)

    def test_after_the_linger_it_goes_with_everything_bulk_that_is_held(self) -> None:
        items = [held(1, "finish", call=1, since=10.0), held(2, "hide", call=2, since=10.9)]
        decision = decide(items, 11.0, FULL, TUNING)
        assert decision.send == (1, 2)
        assert not decision.critical

    def test_a_full_batch_does_not_wait_for_the_linger(self) -> None:
        items = [held(i, "finish", call=i, since=5.0) for i in range(1, 5)]
        decision = decide(items, 5.0, FULL, Tuning(linger=1.0, reserve=0, max_batch=4))
        assert decision.send == (1, 2, 3, 4)

    def test_bulk_keeps_out_of_the_reserve(self) -> None:
        items = [held(1, "finish", since=0.0)]
        waiting = decide(items, 2.0, 10.5, TUNING, refill_at=2.25)
        assert waiting.send == ()
        assert waiting.wake_at == 2.25
        # One slot more than the reserve: it may go (and leave the reserve intact).
        assert decide(items, 2.25, 11.0, TUNING).send == (1,)

    def test_with_no_linger_bulk_goes_at_once(self) -> None:
        decision = decide([held(1, "finish")], 0.0, FULL, Tuning(linger=0.0))
        assert decision.send == (1,)


class TestPausedMethods:
    def test_a_paused_method_is_given_back_with_the_later_commands_of_its_call(self) -> None:
        items = [
            held(1, "finish", call=1),
            held(2, "attach_record", call=1),
            held(3, "register", call=2),
        ]
        paused = {"telephony.externalcall.finish": 100.0}
        decision = decide(items, 5.0, FULL, TUNING, paused)
        assert decision.release == (1, 2)
        assert decision.send == (3,)

    def test_other_methods_keep_flowing_and_the_pause_ends(self) -> None:
        paused = {"telephony.externalcall.finish": 100.0}
        items = [held(1, "hide", call=1, since=0.0)]
        assert decide(items, 5.0, FULL, TUNING, paused).send == (1,)
        assert decide([held(2, "finish", since=0.0)], 100.0, FULL, TUNING, paused).send == (2,)


class TestBucketMirror:
    def test_counts_requests_and_drains(self) -> None:
        mirror = BucketMirror(capacity=45, rate=2.0)
        assert mirror.free(0.0) == 45
        for _ in range(40):
            mirror.take(0.0)
        assert mirror.free(0.0) == pytest.approx(5.0)
        assert mirror.free(2.0) == pytest.approx(9.0)
        # Until 11 are free (one request leaving the reserve of 10): 3 s from t=0.
        assert mirror.time_until_free(10, 0.0) == pytest.approx(3.0)
        assert mirror.free(100.0) == 45

    def test_a_query_limit_answer_means_full(self) -> None:
        mirror = BucketMirror(capacity=45, rate=2.0)
        mirror.fill(0.0)
        assert mirror.free(0.0) == 0.0
        assert mirror.free(5.0) == pytest.approx(10.0)


def test_tuning_is_validated() -> None:
    with pytest.raises(ValueError, match="linger"):
        Tuning(linger=-1.0)
