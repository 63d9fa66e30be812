"""The phonenumbers adapter agrees with the pure domain rules on Russian numbers."""

from __future__ import annotations

import pytest

from callbridge.crm.phones import PhoneNormaliser
from callbridge.domain.phone import normalize

RU_SPELLINGS = [
    "+7 (495) 123-45-67",
    "84951234567",
    "74951234567",
    "8 (495) 123 45 67",
    "+74951234567",
    "4951234567",
]


class TestPhoneNormaliser:
    @pytest.mark.parametrize("raw", RU_SPELLINGS)
    def test_russian_spellings_are_one_number(self, raw: str) -> None:
        assert PhoneNormaliser().e164(raw) == "+74951234567"

    @pytest.mark.parametrize(
        "raw",
        [*RU_SPELLINGS, "+7 916 200-00-02", "8 812 765-43-21", "89031112233", "+79161234567"],
    )
    def test_agrees_with_the_domain_rules(self, raw: str) -> None:
        assert PhoneNormaliser().e164(raw) == normalize(raw).e164

    @pytest.mark.parametrize("raw", ["101", "", "   ", "garbage", "12345678"])
    def test_extensions_and_junk_are_no_number(self, raw: str) -> None:
        assert PhoneNormaliser().e164(raw) is None

    def test_international_numbers(self) -> None:
        phones = PhoneNormaliser()
        assert phones.e164("8 10 380 44 123 4567") == "+380441234567"
        assert phones.e164("+1 415 555 2671") == "+14155552671"

    def test_key_falls_back_to_the_domain_key(self) -> None:
        assert PhoneNormaliser().key("101") == "101"
        assert PhoneNormaliser().key("8 495 123 45 67") == "+74951234567"
