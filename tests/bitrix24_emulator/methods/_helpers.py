"""Building call contexts on a seeded portal for method-handler tests."""

from __future__ import annotations

from typing import Any

import pytest

import bitrix24_emulator.methods.crm
import bitrix24_emulator.methods.users
from bitrix24_emulator.errors import RestError
from bitrix24_emulator.methods.registry import REGISTRY, CallContext, Caller
from bitrix24_emulator.seed import DEFAULT_SEED, SEED_TIME, build_stores, portal_identity
from bitrix24_emulator.state import Portal

NOW = SEED_TIME + 3600


def make_ctx(
    seed: dict[str, Any] | None = None, *, user_id: int = 1, kind: str = "oauth"
) -> CallContext:
    """A context on a fresh portal built from ``seed`` (the default seed if None)."""
    seed = DEFAULT_SEED if seed is None else seed
    users, crm = build_stores(seed)
    domain, member_id = portal_identity(seed)
    portal = Portal(domain, member_id, users=users, crm=crm)
    caller = Caller("oauth", user_id, "app") if kind == "oauth" else Caller("webhook", user_id)
    return CallContext(portal=portal, caller=caller, now=NOW, base_url="http://emu")


def call(ctx: CallContext, name: str, params: dict[str, Any] | None = None) -> Any:
    """Invoke a method as the HTTP layer would."""
    return REGISTRY.invoke(name, ctx, params or {})


def call_error(ctx: CallContext, name: str, params: dict[str, Any] | None = None) -> RestError:
    """Invoke a method that must fail and return its error."""
    with pytest.raises(RestError) as info:
        call(ctx, name, params)
    return info.value


# The imports register the handlers; naming them keeps the imports from looking unused.
assert bitrix24_emulator.methods.crm
assert bitrix24_emulator.methods.users
