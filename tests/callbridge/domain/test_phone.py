"""Phone normalisation: every spelling of one number gets one key; extensions stay apart."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbridge.domain.phone import (
    DEFAULT_RULES,
    PhoneKind,
    PhoneRules,
    extract_digits,
    normalize,
)

E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
SEPARATORS = " -().\t/"


class TestRussianNumbers:
    @pytest.mark.parametrize(
        "raw",
        [
            "+7 (495) 123-45-67",
            "+74951234567",
            "84951234567",
            "74951234567",
            "4951234567",
            "8 (495) 123 45 67",
            "(+7) 495.123.45.67",
            " 7-495-123-45-67 ",
            "tel:+7-495-123-45-67",
        ],
    )
    def test_spellings_of_one_moscow_number(self, raw: str) -> None:
        number = normalize(raw)
        assert number.kind is PhoneKind.EXTERNAL
        assert number.e164 == "+74951234567"
        assert number.key == "+74951234567"
        assert number.raw == raw

    @pytest.mark.parametrize("raw", ["89161234567", "+79161234567", "9161234567"])
    def test_mobile(self, raw: str) -> None:
        assert normalize(raw).e164 == "+79161234567"

    def test_digits_are_kept_as_dialled(self) -> None:
        assert normalize("8 (495) 123-45-67").digits == "84951234567"
        assert normalize("8 10 44 20 7946 0958").digits == "81044207946" + "0958"


class TestInternationalNumbers:
    @pytest.mark.parametrize(
        ("raw", "e164"),
        [
            ("8 10 44 20 7946 0958", "+442079460958"),
            ("0044 20 7946 0958", "+442079460958"),
            ("+44 20 7946 0958", "+442079460958"),
            ("810 375 29 123 45 67", "+375291234567"),
            ("+1 (415) 555-2671", "+14155552671"),
            # Trunks often drop the '+': long strings are taken as international.
            ("380441234567", "+380441234567"),
            ("14155552671", "+14155552671"),
            ("998901234567", "+998901234567"),
        ],
    )
    def test_international(self, raw: str, e164: str) -> None:
        number = normalize(raw)
        assert number.kind is PhoneKind.EXTERNAL
        assert number.e164 == e164

    @pytest.mark.parametrize(
        "raw",
        ["+123", "+1234567", "+1234567890123456", "+0441234567", "00 0441234567", "8 10 123"],
    )
    def test_impossible_international_is_unknown(self, raw: str) -> None:
        number = normalize(raw)
        assert number.kind is not PhoneKind.EXTERNAL
        assert number.e164 is None


class TestExtensions:
    @pytest.mark.parametrize("raw", ["10", "101", "1001", "20001", "123456", " 101 "])
    def test_short_numbers_are_extensions(self, raw: str) -> None:
        number = normalize(raw)
        assert number.kind is PhoneKind.EXTENSION
        assert number.e164 is None
        assert number.key == raw.strip()
        assert number.is_extension
        assert not number.is_external

    def test_extension_lengths_are_configurable(self) -> None:
        rules = PhoneRules(extension_min_digits=3, extension_max_digits=4)
        assert normalize("10", rules).kind is PhoneKind.UNKNOWN
        assert normalize("1001", rules).kind is PhoneKind.EXTENSION
        assert normalize("10001", rules).kind is PhoneKind.UNKNOWN


class TestUnknown:
    @pytest.mark.parametrize("raw", ["", "   ", "anonymous", "Unknown", "<unknown>", "+", "-"])
    def test_no_digits(self, raw: str) -> None:
        number = normalize(raw)
        assert number == normalize(raw)
        assert number.kind is PhoneKind.UNKNOWN
        assert number.digits == ""
        assert number.key == ""

    @pytest.mark.parametrize("raw", ["1", "1234567", "12345678", "123456789"])
    def test_lengths_that_are_neither(self, raw: str) -> None:
        # A 7-digit city number has no area code: keep its digits, claim nothing.
        number = normalize(raw)
        assert number.kind is PhoneKind.UNKNOWN
        assert number.key == raw

    def test_only_ascii_digits_count(self) -> None:
        assert extract_digits("٤٩٥ 12") == "12"
        assert extract_digits("+7 (495) 1²3") == "74951" + "3"


class TestOtherCountries:
    UKRAINE = PhoneRules(default_country_code="380", trunk_prefix="0", national_number_length=9)

    @pytest.mark.parametrize("raw", ["044 123 45 67", "0441234567", "441234567", "+380441234567"])
    def test_ukraine(self, raw: str) -> None:
        assert normalize(raw, self.UKRAINE).e164 == "+380441234567"

    def test_no_trunk_prefix(self) -> None:
        rules = PhoneRules(default_country_code="371", trunk_prefix="", national_number_length=8)
        assert normalize("67123456", rules).e164 == "+37167123456"

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"default_country_code": ""},
            {"default_country_code": "7a"},
            {"default_country_code": "0"},
            {"default_country_code": "1234"},
            {"trunk_prefix": "x"},
            {"national_number_length": 20},
            {"extension_min_digits": 0},
            {"extension_min_digits": 5, "extension_max_digits": 4},
            {"extension_max_digits": 8},
            {"international_prefixes": ("00", "+")},
        ],
    )
    def test_invalid_rules_are_refused(self, kwargs: dict[str, object]) -> None:
        with pytest.raises(ValueError, match=r"must|has|shorter"):
            PhoneRules(**kwargs)  # type: ignore[arg-type]


# -- properties -------------------------------------------------------------------------------

national_numbers = st.from_regex(r"\A[3-9][0-9]{9}\Z")
any_text = st.text(alphabet=st.sampled_from("0123456789+ -()8x#*"), max_size=24) | st.text(
    max_size=24
)


def with_separators(digits: str, draw_seps: list[str]) -> str:
    out = []
    for index, ch in enumerate(digits):
        out.append(draw_seps[index % len(draw_seps)] if draw_seps else "")
        out.append(ch)
    return "".join(out)


class TestProperties:
    @given(any_text)
    def test_normalising_the_key_again_changes_nothing(self, raw: str) -> None:
        first = normalize(raw)
        again = normalize(first.key)
        assert again.key == first.key
        if first.kind is PhoneKind.EXTERNAL:
            assert again.kind is PhoneKind.EXTERNAL
            assert again.e164 == first.e164
        if first.kind is PhoneKind.EXTENSION:
            assert again.kind is PhoneKind.EXTENSION

    @given(any_text)
    def test_e164_is_well_formed_and_digits_are_the_raw_digits(self, raw: str) -> None:
        number = normalize(raw)
        assert number.digits == extract_digits(raw)
        if number.e164 is not None:
            assert E164.match(number.e164)
            assert number.kind is PhoneKind.EXTERNAL
        else:
            assert number.kind is not PhoneKind.EXTERNAL

    @given(
        st.from_regex(r"\A\+?[0-9]{1,16}\Z"),
        st.lists(st.text(alphabet=SEPARATORS, min_size=0, max_size=2), max_size=6),
    )
    def test_formatting_does_not_matter(self, plain: str, separators: list[str]) -> None:
        plus = plain.startswith("+")
        digits = plain.lstrip("+")
        formatted = ("+" if plus else "") + with_separators(digits, separators) + " "
        a, b = normalize(plain), normalize(formatted)
        assert (a.kind, a.e164, a.digits, a.key) == (b.kind, b.e164, b.digits, b.key)

    @given(national_numbers)
    def test_every_russian_spelling_gives_one_number(self, national: str) -> None:
        expected = "+7" + national
        spellings = [
            national,
            "8" + national,
            "7" + national,
            "+7" + national,
            f"+7 ({national[:3]}) {national[3:6]}-{national[6:8]}-{national[8:]}",
            f"8 {national[:3]} {national[3:]}",
        ]
        assert {normalize(s).e164 for s in spellings} == {expected}

    @given(st.from_regex(r"\A[0-9]{2,6}\Z"))
    def test_short_digit_strings_are_extensions(self, digits: str) -> None:
        assert normalize(digits).kind is PhoneKind.EXTENSION
        assert normalize("+" + digits).kind is PhoneKind.UNKNOWN

    @given(st.from_regex(r"\A[1-9][0-9]{7,14}\Z"))
    def test_plus_means_international_as_written(self, digits: str) -> None:
        assert normalize("+" + digits).e164 == "+" + digits
        assert normalize("00" + digits).e164 == "+" + digits
        assert normalize("810" + digits).e164 == "+" + digits

    def test_default_rules_are_russian(self) -> None:
        assert DEFAULT_RULES.default_country_code == "7"
        assert DEFAULT_RULES.trunk_prefix == "8"
