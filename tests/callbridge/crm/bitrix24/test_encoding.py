"""PHP-bracket form encoding and batch command strings (spec §4.1, §4.4)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote

from hypothesis import given
from hypothesis import strategies as st

from callbridge.crm.bitrix24.encoding import (
    build_command,
    decode_form,
    encode_command_query,
    encode_form,
    encode_pairs,
)

# Keys PHP keeps as map keys: non-empty, no brackets, not integers.
_keys = st.text(
    st.characters(blacklist_characters="[]", blacklist_categories=("Cs",)), min_size=1, max_size=8
).filter(lambda k: not k.strip().isdigit() and k == k.strip() and "\x00" not in k)
_leaves = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10).filter(
    lambda v: "\x00" not in v
)


def _params() -> st.SearchStrategy[Any]:
    value = st.recursive(
        _leaves,
        lambda inner: (
            st.lists(inner, min_size=1, max_size=4)
            | st.dictionaries(_keys, inner, min_size=1, max_size=4)
        ),
        max_leaves=12,
    )
    return st.dictionaries(_keys, value, max_size=5)


class TestEncodePairs:
    def test_nested_fields_and_lists(self) -> None:
        pairs = list(
            encode_pairs(
                {
                    "fields": {
                        "TITLE": "My company",
                        "PHONE": [{"VALUE": "112233", "VALUE_TYPE": "WORK"}],
                    },
                    "select": ["ID", "NAME"],
                }
            )
        )
        assert pairs == [
            ("fields[TITLE]", "My company"),
            ("fields[PHONE][0][VALUE]", "112233"),
            ("fields[PHONE][0][VALUE_TYPE]", "WORK"),
            ("select[0]", "ID"),
            ("select[1]", "NAME"),
        ]

    def test_scalars_as_php_writes_them(self) -> None:
        pairs = dict(encode_pairs({"a": True, "b": False, "c": 2.0, "d": 7, "e": None}))
        assert pairs == {"a": "1", "b": "0", "c": "2", "d": "7"}

    def test_empty_array_is_sent_explicitly(self) -> None:
        assert list(encode_pairs({"select": [], "filter": {}})) == [
            ("select[]", ""),
            ("filter[]", ""),
        ]

    def test_operator_keys_are_percent_encoded(self) -> None:
        assert encode_form({"FILTER": {">=PRICE": 15}}) == "FILTER%5B%3E%3DPRICE%5D=15"


class TestDecodeForm:
    def test_event_body(self) -> None:
        body = (
            "event=ONEXTERNALCALLSTART&data%5BCALL_ID%5D=externalCall.1&data%5BUSER_ID%5D=5"
            "&auth%5Bapplication_token%5D=tok&auth%5Bmember_id%5D=m1"
        )
        assert decode_form(body) == {
            "event": "ONEXTERNALCALLSTART",
            "data": {"CALL_ID": "externalCall.1", "USER_ID": "5"},
            "auth": {"application_token": "tok", "member_id": "m1"},
        }

    def test_appended_list_items(self) -> None:
        assert decode_form("select[]=ID&select[]=NAME&e[]=") == {
            "select": ["ID", "NAME"],
            "e": [],
        }

    @given(_params())
    def test_round_trip(self, params: dict[str, Any]) -> None:
        assert decode_form(encode_form(params)) == params


class TestBatchCommands:
    def test_command_string(self) -> None:
        assert build_command("user.current") == "user.current"
        assert build_command("crm.lead.add", {"fields": {"TITLE": "a&b"}}) == (
            "crm.lead.add?fields%5BTITLE%5D=a%26b"
        )

    def test_reference_stays_readable(self) -> None:
        query = encode_command_query({"ID": "$result[get_user][UF_DEPARTMENT][0]"})
        assert query == "ID=$result[get_user][UF_DEPARTMENT][0]"

    def test_double_encoding_in_a_query_string(self) -> None:
        command = build_command("crm.lead.add", {"fields": {"TITLE": "a&b"}})
        outer = encode_form({"cmd": {"lead": command}})
        assert "%2526" in outer  # "&" inside a value: %26, encoded again
        ((key, value),) = parse_qsl(outer)
        assert key == "cmd[lead]"
        assert decode_form(value.split("?", 1)[1]) == {"fields": {"TITLE": "a&b"}}
        assert unquote(value) == "crm.lead.add?fields[TITLE]=a&b"

    @given(_params())
    def test_command_round_trip(self, params: dict[str, Any]) -> None:
        command = build_command("m.x", params)
        query = command.split("?", 1)[1] if "?" in command else ""
        assert decode_form(query) == params
