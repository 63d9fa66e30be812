"""PHP-style form encoding of nested parameters, and ``batch`` command strings (spec §4.1, §4.4).

Bitrix24 reads form bodies and query strings the way PHP fills ``$_POST``:
``fields[PHONE][0][VALUE]=112233&select[]=ID``. Events arrive in the same encoding (§2.2).
A batch command is ``"method?query"`` with the query encoded once; inside a JSON body that string
is sent as is, and inside a query string it is encoded again (``%26`` becomes ``%2526``).

Round trip: for parameters made of non-empty string keys that are not all integers, string
leaves and lists, ``decode_form(encode_form(params)) == params``. Ints, floats and booleans come
back as strings, the way PHP would see them (``True`` is ``"1"``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])+)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
# Characters a batch reference needs verbatim: ``$result[cmd][field][0]``.
_REFERENCE_SAFE = "$[]"


def form_value(value: Any) -> str:
    """One scalar as PHP's ``http_build_query`` writes it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def encode_pairs(params: Mapping[str, Any], prefix: str | None = None) -> Iterator[tuple[str, str]]:
    """Flatten nested params into bracketed ``(key, value)`` pairs.

    ``None`` is left out (as PHP does). An empty list or mapping becomes ``key[]=`` (as the
    Python SDK sends it), so that "no values" is not confused with "parameter absent".
    """
    for raw_key, value in params.items():
        key = str(raw_key) if prefix is None else f"{prefix}[{raw_key}]"
        if value is None:
            continue
        if isinstance(value, Mapping):
            if not value:
                yield f"{key}[]", ""
            else:
                yield from encode_pairs(value, key)
        elif isinstance(value, list | tuple):
            if not value:
                yield f"{key}[]", ""
            else:
                yield from encode_pairs({str(i): item for i, item in enumerate(value)}, key)
        else:
            yield key, form_value(value)


def encode_form(params: Mapping[str, Any]) -> str:
    """``application/x-www-form-urlencoded`` text of nested params (brackets percent-encoded)."""
    return urlencode(list(encode_pairs(params)))


def encode_command_query(params: Mapping[str, Any]) -> str:
    """The query part of a batch command; ``$result[...]`` references stay readable."""
    parts = []
    for key, value in encode_pairs(params):
        # A reference must reach the portal verbatim in case it substitutes before decoding.
        safe = _REFERENCE_SAFE if "$result[" in value else ""
        parts.append(f"{quote(key, safe='')}={quote(value, safe=safe)}")
    return "&".join(parts)


def build_command(method: str, params: Mapping[str, Any] | None = None) -> str:
    """A batch command string: ``"method?query"`` (or just the method when there are no params)."""
    query = encode_command_query(params or {})
    return f"{method}?{query}" if query else method


def _is_index(key: str) -> bool:
    return key.isascii() and key.isdigit() and (key == "0" or not key.startswith("0"))


def _next_index(node: Mapping[str, Any]) -> int:
    keys = [int(k) for k in node if _is_index(k)]
    return max(keys) + 1 if keys else 0


def _finish(value: Any) -> Any:
    """Dicts keyed 0..n-1 in order become lists, as PHP's ``json_encode`` shows them."""
    if not isinstance(value, dict):
        return value
    done = {k: _finish(v) for k, v in value.items()}
    if not done:
        return []  # ``key[]=``: PHP cannot tell an empty map from an empty list
    if all(_is_index(k) for k in done) and [int(k) for k in done] == list(range(len(done))):
        return list(done.values())
    return done


def decode_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Nested params from ``(key, value)`` pairs with PHP bracket keys (``key[]=`` is ``[]``)."""
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
                child = {}  # PHP replaces a scalar with an array when brackets follow the name
                node[key] = child
            if segment == "":
                if position == len(segments) - 1 and value == "":
                    break  # ``key[]=``: an empty array
                segment = str(_next_index(child))
            node, key = child, segment
        else:
            node[key] = value
    # The top level stays a mapping even when its keys look like indexes.
    return {k: _finish(v) for k, v in root.items()}


def decode_form(body: str | bytes) -> dict[str, Any]:
    """Nested params from a form body or query string."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    return decode_pairs(parse_qsl(body, keep_blank_values=True))
