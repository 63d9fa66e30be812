"""PHP bracket form decoding and the http_build_query-style encoder."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bitrix24_emulator.encoding import decode_query, encode_form, encode_pairs


class TestDecode:
    def test_nested_multifield(self) -> None:
        got = decode_query(
            "FIELDS%5BTITLE%5D=Shop&FIELDS%5BPHONE%5D%5B0%5D%5BVALUE%5D=%2B7900"
            "&FIELDS[PHONE][0][VALUE_TYPE]=WORK&FIELDS[PHONE][1][VALUE]=112233"
        )
        assert got == {
            "FIELDS": {
                "TITLE": "Shop",
                "PHONE": [{"VALUE": "+7900", "VALUE_TYPE": "WORK"}, {"VALUE": "112233"}],
            }
        }

    def test_append_lists_and_indexed_lists(self) -> None:
        assert decode_query("select[]=ID&select[]=NAME&USER_ID[0]=11&USER_ID[1]=24") == {
            "select": ["ID", "NAME"],
            "USER_ID": ["11", "24"],
        }

    def test_operator_keys_stay_keys(self) -> None:
        assert decode_query("FILTER%5B%3E%3DPRICE%5D=15&FILTER[!ID]=3") == {
            "FILTER": {">=PRICE": "15", "!ID": "3"}
        }

    def test_empty_array_marker(self) -> None:
        assert decode_query("select[]=&x=1") == {"select": [], "x": "1"}

    def test_sparse_indexes_stay_a_map(self) -> None:
        assert decode_query("USER_ID[1]=11&USER_ID[3]=24") == {"USER_ID": {"1": "11", "3": "24"}}

    def test_plain_and_blank_values(self) -> None:
        assert decode_query("a=&b=x%26y&c=%D0%AF") == {"a": "", "b": "x&y", "c": "Я"}

    def test_top_level_numeric_keys_stay_a_dict(self) -> None:
        assert decode_query("0=a&1=b") == {"0": "a", "1": "b"}


class TestEncode:
    def test_event_body_is_bracketed_and_all_strings(self) -> None:
        body = encode_form(
            {"event": "ONX", "data": {"USER_ID": 1269, "IS_MOBILE": False, "LIST": [1, 2]}}
        )
        assert body == (
            "event=ONX&data%5BUSER_ID%5D=1269&data%5BIS_MOBILE%5D=0"
            "&data%5BLIST%5D%5B0%5D=1&data%5BLIST%5D%5B1%5D=2"
        )

    def test_none_and_empty_arrays_are_left_out(self) -> None:
        assert list(encode_pairs({"a": None, "b": [], "c": {}, "d": ""})) == [("d", "")]


_key = st.text(
    alphabet=st.characters(blacklist_characters="[]", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=8,
)
_scalar = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10)
_value = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_key, inner, max_size=4),
    max_leaves=12,
)


def _normalise(value: Any) -> Any:
    """What PHP would hand back: empty containers vanish, 0..n-1 maps are lists."""
    if isinstance(value, list):
        value = {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        kept = {k: _normalise(v) for k, v in value.items()}
        kept = {k: v for k, v in kept.items() if v is not _GONE}
        if not kept:
            return _GONE
        if list(kept) == [str(i) for i in range(len(kept))]:
            return list(kept.values())
        return kept
    return value


_GONE = object()


@given(st.dictionaries(_key, _value, max_size=5))
def test_round_trip(data: dict[str, Any]) -> None:
    expected = {k: _normalise(v) for k, v in data.items()}
    expected = {k: v for k, v in expected.items() if v is not _GONE}
    assert decode_query(encode_form(data)) == expected
