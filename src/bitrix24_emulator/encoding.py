"""PHP-style form encoding, as Bitrix24 reads requests and writes events (spec §2.2, §4.1).

Decoding turns ``FIELDS[PHONE][0][VALUE]=x&select[]=ID`` into nested dicts and lists the way PHP
fills ``$_POST``; encoding does what PHP's ``http_build_query`` does: bracketed keys, every value a
string, ``None`` and empty arrays left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])+)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


def _next_index(node: dict[str, Any]) -> int:
    """PHP's next automatic index: one past the largest integer key."""
    keys = [int(k) for k in node if _is_index(k)]
    return max(keys) + 1 if keys else 0


def _is_index(key: str) -> bool:
    return key.isascii() and key.isdigit() and (key == "0" or not key.startswith("0"))


def _finish(value: Any) -> Any:
    """Turn dicts keyed 0..n-1 (in order) into lists, the way PHP's json_encode shows them."""
    if not isinstance(value, dict):
        return value
    done = {k: _finish(v) for k, v in value.items()}
    if all(_is_index(k) for k in done) and [int(k) for k in done] == list(range(len(done))):
        return list(done.values())
    return done


def decode_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Build nested params from ``(key, value)`` pairs with PHP bracket keys."""
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        match = _KEY.match(raw_key)
        if match is None:
            root[raw_key] = value
            continue
        segments = _SEGMENT.findall(match.group(2))
        node = root
        key = match.group(1)
        for position, segment in enumerate(segments):
            child = node.get(key)
            if not isinstance(child, dict):
                # PHP replaces a scalar with an array when brackets follow the same name.
                child = {}
                node[key] = child
            if segment == "":
                if position == len(segments) - 1 and value == "":
                    # ``key[]=`` is how clients send an empty array (PySDK does).
                    break
                segment = str(_next_index(child))
            node, key = child, segment
        else:
            node[key] = value
    # The top level is always a dict, even when its keys look like indexes.
    return {k: _finish(v) for k, v in root.items()}


def decode_query(query: str | bytes) -> dict[str, Any]:
    """Decode an ``application/x-www-form-urlencoded`` string (query string or body)."""
    if isinstance(query, bytes):
        query = query.decode("utf-8", errors="replace")
    return decode_pairs(parse_qsl(query, keep_blank_values=True))


def form_value(value: Any) -> str:
    """One scalar as PHP's http_build_query writes it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def encode_pairs(data: Mapping[str, Any], prefix: str | None = None) -> Iterator[tuple[str, str]]:
    """Flatten nested data into bracketed ``(key, value)`` pairs; None and empty arrays vanish."""
    for raw_key, value in data.items():
        key = str(raw_key) if prefix is None else f"{prefix}[{raw_key}]"
        if value is None:
            continue
        if isinstance(value, Mapping):
            yield from encode_pairs(value, key)
        elif isinstance(value, list | tuple):
            yield from encode_pairs({str(i): item for i, item in enumerate(value)}, key)
        else:
            yield key, form_value(value)


def encode_form(data: Mapping[str, Any]) -> str:
    """The form-encoded body of an event delivery (brackets percent-encoded, as on the wire)."""
    return urlencode(list(encode_pairs(data)))
