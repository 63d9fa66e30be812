"""UserStore: records shaped as user.get returns them, lookups by internal number."""

from __future__ import annotations

import pytest

from bitrix24_emulator.store.users import UserStore, as_bool


@pytest.fixture
def store() -> UserStore:
    return UserStore(
        [
            {"ID": 1, "NAME": "Иван", "UF_PHONE_INNER": "101", "ADMIN": True},
            {"ID": 2, "NAME": "Мария", "UF_PHONE_INNER": 102, "ACTIVE": "N"},
            {"ID": 3, "NAME": "Дмитрий", "PERSONAL_MOBILE": "+79161234567"},
        ]
    )


class TestUserStore:
    def test_empty_by_default(self) -> None:
        store = UserStore()
        assert store.all() == []
        assert store.get(1) is None
        assert store.by_inner_phone("101") is None
        assert not store.is_active(1)

    def test_record_has_user_get_shape(self, store: UserStore) -> None:
        user = store.get(1)
        assert user is not None
        assert user["ID"] == "1"
        assert user["ACTIVE"] is True
        assert user["NAME"] == "Иван"
        assert user["UF_PHONE_INNER"] == "101"
        assert user["UF_DEPARTMENT"] == [1]
        for name in ("LAST_NAME", "EMAIL", "PERSONAL_MOBILE", "WORK_PHONE", "PERSONAL_PHONE"):
            assert user[name] == ""
        assert "ADMIN" not in user

    def test_inner_number_stored_as_string_and_absent_as_null(self, store: UserStore) -> None:
        assert store.get(2)["UF_PHONE_INNER"] == "102"  # type: ignore[index]
        assert store.get(3)["UF_PHONE_INNER"] is None  # type: ignore[index]

    def test_by_inner_phone_finds_inactive_users_too(self, store: UserStore) -> None:
        found = store.by_inner_phone("102")
        assert found is not None
        assert found["ID"] == "2"
        assert found["ACTIVE"] is False
        assert store.by_inner_phone(" 101 ")["ID"] == "1"  # type: ignore[index]
        assert store.by_inner_phone("999") is None

    def test_is_active(self, store: UserStore) -> None:
        assert store.is_active(1)
        assert not store.is_active(2)
        assert not store.is_active(42)

    def test_is_admin(self, store: UserStore) -> None:
        assert store.is_admin(1)
        assert not store.is_admin(3)

    def test_add_assigns_next_id(self, store: UserStore) -> None:
        assert store.add({"NAME": "Новый"}) == 4
        assert store.get(4)["NAME"] == "Новый"  # type: ignore[index]

    def test_get_returns_a_copy(self, store: UserStore) -> None:
        store.get(1)["UF_DEPARTMENT"].append(99)  # type: ignore[index]
        assert store.get(1)["UF_DEPARTMENT"] == [1]  # type: ignore[index]

    def test_all_is_ordered_by_id(self) -> None:
        store = UserStore([{"ID": 5}, {"ID": 2}])
        assert [u["ID"] for u in store.all()] == ["2", "5"]

    def test_rejects_non_positive_id(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            UserStore([{"ID": 0}])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(True, True), ("Y", True), ("true", True), ("1", True), (1, True)],
        *[(False, False), ("N", False), ("false", False), ("0", False), (0, False), ("", False)],
    ],
)
def test_as_bool(value: object, expected: bool) -> None:
    assert as_bool(value) is expected
