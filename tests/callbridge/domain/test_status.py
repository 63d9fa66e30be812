"""PBX outcomes → Bitrix24 STATUS_CODE strings (bitrix24-api.md §1.2 and its Asterisk mapping)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbridge.domain.events import Direction, Disposition
from callbridge.domain.status import (
    STATUS_CODES,
    disposition_from_dial_status,
    hangup_cause_text,
    status_code,
)

IN, OUT, INTERNAL = Direction.INBOUND, Direction.OUTBOUND, Direction.INTERNAL


class TestStatusCode:
    @pytest.mark.parametrize("direction", list(Direction))
    @pytest.mark.parametrize("disposition", [*Disposition, None])
    def test_an_answered_leg_is_200_whatever_the_pbx_says(
        self, direction: Direction, disposition: Disposition | None
    ) -> None:
        code = status_code(
            answered=True, direction=direction, disposition=disposition, hangup_cause=34
        )
        assert code == "200"

    @pytest.mark.parametrize(
        ("direction", "disposition", "cause", "expected"),
        [
            (IN, Disposition.NO_ANSWER, None, "304"),
            (IN, Disposition.NO_ANSWER, 19, "304"),
            (OUT, Disposition.NO_ANSWER, None, "304"),
            (IN, Disposition.BUSY, 17, "486"),
            (OUT, Disposition.BUSY, None, "486"),
            # The caller gave up while it rang: missed, so that someone calls back.
            (IN, Disposition.CANCELLED, 16, "304"),
            # The employee abandoned the outbound call before the far end answered.
            (OUT, Disposition.CANCELLED, 16, "603-S"),
            (INTERNAL, Disposition.CANCELLED, None, "603-S"),
            (OUT, Disposition.FAILED, 34, "503"),
            (OUT, Disposition.FAILED, 20, "480"),
            (OUT, Disposition.FAILED, 1, "404"),
            (OUT, Disposition.FAILED, 28, "404"),
            (OUT, Disposition.FAILED, 21, "603"),
            (OUT, Disposition.FAILED, 17, "486"),
            (OUT, Disposition.FAILED, 57, "403"),
            (OUT, Disposition.FAILED, 52, "423"),
            (OUT, Disposition.FAILED, 16, "OTHER"),
            (OUT, Disposition.FAILED, None, "OTHER"),
            (IN, Disposition.FAILED, 38, "503"),
            # "Answered" for a leg nobody answered (a transfer target): a ring, unanswered.
            (IN, Disposition.ANSWERED, None, "304"),
            (IN, Disposition.ANSWERED, 16, "304"),
            (IN, Disposition.ANSWERED, 17, "486"),
            (IN, None, None, "304"),
            (OUT, None, 34, "503"),
        ],
    )
    def test_missed_and_failed(
        self,
        direction: Direction,
        disposition: Disposition | None,
        cause: int | None,
        expected: str,
    ) -> None:
        assert (
            status_code(
                answered=False, direction=direction, disposition=disposition, hangup_cause=cause
            )
            == expected
        )

    @given(
        st.booleans(),
        st.sampled_from(Direction),
        st.none() | st.sampled_from(Disposition),
        st.none() | st.integers(0, 255),
    )
    def test_always_a_documented_string(
        self,
        answered: bool,
        direction: Direction,
        disposition: Disposition | None,
        cause: int | None,
    ) -> None:
        code = status_code(
            answered=answered, direction=direction, disposition=disposition, hangup_cause=cause
        )
        assert isinstance(code, str)
        assert code in STATUS_CODES

    def test_codes_are_the_documented_set(self) -> None:
        assert {"200", "304", "603", "603-S", "486", "503", "480", "404", "OTHER"} <= STATUS_CODES


class TestDialStatus:
    @pytest.mark.parametrize(
        ("dial_status", "expected"),
        [
            ("ANSWER", (Disposition.ANSWERED, None)),
            ("NOANSWER", (Disposition.NO_ANSWER, None)),
            ("BUSY", (Disposition.BUSY, 17)),
            ("CANCEL", (Disposition.CANCELLED, None)),
            ("CONGESTION", (Disposition.FAILED, 34)),
            ("CHANUNAVAIL", (Disposition.FAILED, 20)),
            (" noanswer ", (Disposition.NO_ANSWER, None)),
            ("SOMETHINGNEW", (Disposition.FAILED, None)),
            ("", (Disposition.FAILED, None)),
        ],
    )
    def test_mapping(self, dial_status: str, expected: tuple[Disposition, int | None]) -> None:
        assert disposition_from_dial_status(dial_status) == expected

    @pytest.mark.parametrize(
        ("dial_status", "code"),
        [("CONGESTION", "503"), ("CHANUNAVAIL", "480"), ("BUSY", "486"), ("NOANSWER", "304")],
    )
    def test_dial_status_to_bitrix24_code(self, dial_status: str, code: str) -> None:
        disposition, cause = disposition_from_dial_status(dial_status)
        assert (
            status_code(answered=False, direction=OUT, disposition=disposition, hangup_cause=cause)
            == code
        )


class TestHangupCauseText:
    def test_known(self) -> None:
        assert hangup_cause_text(17) == "Q.850 cause 17: user busy"

    def test_unknown_number(self) -> None:
        assert hangup_cause_text(99) == "Q.850 cause 99"

    def test_none(self) -> None:
        assert hangup_cause_text(None) == ""
