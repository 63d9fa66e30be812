"""Phone number normalisation: E.164 where the number allows it, extensions kept apart.

The rules are the ones a Russian/CIS PBX produces: callers arrive as ``84951234567``,
``74951234567``, ``+7 (495) 123-45-67`` or ``4951234567``; international numbers as
``8 10 …`` or ``00 …``; employees' phones as 2-6 digit extensions. Other countries plug in
through :class:`PhoneRules`. Full per-country validation (the ``phonenumbers`` package) is an
adapter concern; the domain only needs a stable key that makes all spellings of one number equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DEFAULT_RULES",
    "E164_MAX_DIGITS",
    "E164_MIN_DIGITS",
    "PhoneKind",
    "PhoneNumber",
    "PhoneRules",
    "extract_digits",
    "normalize",
]

# ITU-T E.164 allows at most 15 digits; below 8 no country's full number fits (country
# code + subscriber), so a shorter "+..." string is a typo or an extension, not a number.
E164_MAX_DIGITS = 15
E164_MIN_DIGITS = 8

_ASCII_DIGITS = frozenset("0123456789")


class PhoneKind(StrEnum):
    """What a dialled string turned out to be."""

    EXTERNAL = "external"
    EXTENSION = "extension"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class PhoneRules:
    """How to read national numbers: the country, its trunk and international prefixes."""

    default_country_code: str = "7"
    trunk_prefix: str = "8"
    national_number_length: int = 10
    international_prefixes: tuple[str, ...] = ("810", "00")
    extension_min_digits: int = 2
    extension_max_digits: int = 6

    def __post_init__(self) -> None:
        if not (self.default_country_code.isascii() and self.default_country_code.isdigit()):
            raise ValueError("default_country_code must be digits, e.g. '7'")
        if not 1 <= len(self.default_country_code) <= 3 or self.default_country_code[0] == "0":
            raise ValueError("default_country_code has 1 to 3 digits and no leading zero")
        if self.trunk_prefix and not (self.trunk_prefix.isascii() and self.trunk_prefix.isdigit()):
            raise ValueError("trunk_prefix must be digits or empty")
        total = len(self.default_country_code) + self.national_number_length
        if not E164_MIN_DIGITS <= total <= E164_MAX_DIGITS:
            raise ValueError("country code + national number must be 8 to 15 digits")
        if not 1 <= self.extension_min_digits <= self.extension_max_digits:
            raise ValueError("extension lengths must satisfy 1 <= min <= max")
        # An extension as long as a national number would be ambiguous.
        if self.extension_max_digits >= min(self.national_number_length, E164_MIN_DIGITS):
            raise ValueError("extensions must be shorter than national numbers")
        for prefix in self.international_prefixes:
            if not (prefix.isascii() and prefix.isdigit()):
                raise ValueError("international prefixes must be digits")


DEFAULT_RULES = PhoneRules()


@dataclass(frozen=True, slots=True)
class PhoneNumber:
    """A dialled string read as an external number, an extension, or neither.

    ``raw`` is the string as received, ``digits`` all its ASCII digits (prefixes included),
    ``e164`` the international form when the number is external.
    """

    raw: str
    digits: str
    kind: PhoneKind
    e164: str | None = None

    @property
    def key(self) -> str:
        """The form to store, compare and send: E.164 when known, else the digits."""
        return self.e164 or self.digits

    @property
    def is_external(self) -> bool:
        """True for a number outside the PBX (a customer, a mobile)."""
        return self.kind is PhoneKind.EXTERNAL

    @property
    def is_extension(self) -> bool:
        """True for a short internal number."""
        return self.kind is PhoneKind.EXTENSION


def extract_digits(raw: str) -> str:
    """The ASCII digits of ``raw``, in order (separators, letters and signs dropped)."""
    # str.isdigit() also accepts superscripts and other scripts' digits; a PBX never sends
    # those, and letting them through would make int() and E.164 strings disagree.
    return "".join(ch for ch in raw if ch in _ASCII_DIGITS)


def _has_plus(raw: str) -> bool:
    """Whether a '+' comes before the first digit (``(+7) 495…`` counts)."""
    for ch in raw:
        if ch == "+":
            return True
        if ch in _ASCII_DIGITS:
            return False
    return False


def _international(raw: str, digits: str, number: str) -> PhoneNumber:
    """``number`` is ``digits`` without any access prefix: country code first."""
    if E164_MIN_DIGITS <= len(number) <= E164_MAX_DIGITS and number[0] != "0":
        return PhoneNumber(raw, digits, PhoneKind.EXTERNAL, "+" + number)
    return PhoneNumber(raw, digits, PhoneKind.UNKNOWN)


def normalize(raw: str, rules: PhoneRules = DEFAULT_RULES) -> PhoneNumber:
    """Read a dialled string; all spellings of one number get the same ``key``."""
    digits = extract_digits(raw)
    if not digits:
        return PhoneNumber(raw, "", PhoneKind.UNKNOWN)
    if _has_plus(raw):
        return _international(raw, digits, digits)

    cc = rules.default_country_code
    national = rules.national_number_length
    trunk = rules.trunk_prefix
    # International access prefixes first: in Russia "8 10" always means "abroad" (no area
    # code starts with 1), and "00" is the ITU default used by CIS mobile operators.
    for prefix in rules.international_prefixes:
        rest = digits[len(prefix) :]
        if digits.startswith(prefix) and len(rest) >= E164_MIN_DIGITS:
            return _international(raw, digits, rest)
    if len(digits) == len(cc) + national and digits.startswith(cc):
        return PhoneNumber(raw, digits, PhoneKind.EXTERNAL, "+" + digits)
    if trunk and len(digits) == len(trunk) + national and digits.startswith(trunk):
        return PhoneNumber(raw, digits, PhoneKind.EXTERNAL, "+" + cc + digits[len(trunk) :])
    if len(digits) == national:
        return PhoneNumber(raw, digits, PhoneKind.EXTERNAL, "+" + cc + digits)
    if rules.extension_min_digits <= len(digits) <= rules.extension_max_digits:
        return PhoneNumber(raw, digits, PhoneKind.EXTENSION)
    # Trunks often drop the '+': a long digit string that is no national number is taken
    # as international (e.g. 380441234567, 14155552671).
    if len(cc) + national < len(digits) <= E164_MAX_DIGITS or (
        len(digits) == len(cc) + national and not digits.startswith(cc)
    ):
        return _international(raw, digits, digits)
    # 7-digit city numbers without an area code, stray 8/9-digit strings: keep the digits
    # (they still match themselves) but claim nothing.
    return PhoneNumber(raw, digits, PhoneKind.UNKNOWN)
