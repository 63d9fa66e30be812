"""Phone numbers as the CRM stores and searches them, read with Google's ``phonenumbers``.

:mod:`callbridge.domain.phone` gives a stable key for the formats a Russian/CIS PBX produces
without any dependency; this adapter adds per-country validation and formats (the numbers
employees type into their Bitrix24 profiles, CRM contacts from anywhere). Both agree on Russian
numbers: ``+7 (495) 123-45-67``, ``84951234567`` and ``74951234567`` are all ``+74951234567``.
"""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers

from callbridge.domain.phone import DEFAULT_RULES, PhoneKind, PhoneRules, normalize

__all__ = ["PhoneNormaliser"]


@dataclass(frozen=True)
class PhoneNormaliser:
    """Turns what people type into E.164, for one default region (``RU`` unless told)."""

    region: str = "RU"
    rules: PhoneRules = DEFAULT_RULES

    def e164(self, raw: str | None) -> str | None:
        """The number in E.164 (``+74951234567``), or None when it is no possible number."""
        if not raw or not raw.strip():
            return None
        # The domain's rules know the PBX spellings phonenumbers does not: a bare "7..." or
        # "8 10 ..." dialled without '+'. Try them first, then let phonenumbers judge.
        domain = normalize(raw, self.rules)
        if domain.kind is PhoneKind.EXTENSION:
            return None
        candidates = [domain.e164] if domain.e164 else []
        candidates.append(raw)
        for candidate in candidates:
            if candidate is None:
                continue
            try:
                number = phonenumbers.parse(candidate, self.region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_possible_number(number):
                return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        return None

    def key(self, raw: str) -> str:
        """The form to compare and cache by: E.164 when possible, else the domain's key."""
        return self.e164(raw) or normalize(raw, self.rules).key
