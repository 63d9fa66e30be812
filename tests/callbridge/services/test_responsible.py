"""Choosing the responsible user's extension from searchCrmEntities, and the answer cache."""

from __future__ import annotations

from typing import Any

from callbridge.services.responsible import (
    Responsible,
    ResponsibleCache,
    ResponsibleMiss,
    choose_responsible,
)


def match(entity_id: int, assigned: int, kind: str = "CONTACT") -> dict[str, Any]:
    return {
        "CRM_ENTITY_TYPE": kind,
        "CRM_ENTITY_ID": entity_id,
        "ASSIGNED_BY_ID": assigned,
        "NAME": f"Client {entity_id}",
        "ASSIGNED_BY": {"ID": str(assigned)},
    }


class TestChooseResponsible:
    def test_first_match_wins(self) -> None:
        found = choose_responsible([match(1, 2), match(7, 3, "LEAD")], {2: "102", 3: "103"})
        assert found == Responsible("102", 2, "CONTACT", 1, "Client 1")

    def test_nothing_found(self) -> None:
        empties: list[Any] = [[], None, {}]
        for empty in empties:
            miss = choose_responsible(empty, {2: "102"})
            assert isinstance(miss, ResponsibleMiss)
            assert miss.reason == "unknown_number"

    def test_responsible_without_extension(self) -> None:
        miss = choose_responsible([match(1, 5)], {2: "102"})
        assert isinstance(miss, ResponsibleMiss)
        assert (miss.reason, miss.user_id) == ("no_extension", 5)

    def test_assigned_by_block_when_the_id_is_missing(self) -> None:
        raw = match(1, 2) | {"ASSIGNED_BY_ID": None}
        assert isinstance(choose_responsible([raw], {2: "102"}), Responsible)


class TestResponsibleCache:
    def test_entries_expire(self) -> None:
        now = [0.0]
        cache = ResponsibleCache(ttl_seconds=60, clock=lambda: now[0])
        answer = Responsible("102", 2, "CONTACT", 1)
        cache.put("k", answer)
        now[0] = 59.9
        assert cache.get("k") == answer
        now[0] = 60.0
        assert cache.get("k") is None
        assert len(cache) == 0

    def test_least_recently_used_is_evicted(self) -> None:
        cache = ResponsibleCache(max_entries=2)
        miss = ResponsibleMiss("unknown_number", "")
        cache.put("a", miss)
        cache.put("b", miss)
        assert cache.get("a") is miss  # "a" is now the most recent
        cache.put("c", miss)
        assert cache.get("b") is None
        assert cache.get("a") is miss
        assert cache.get("c") is miss
