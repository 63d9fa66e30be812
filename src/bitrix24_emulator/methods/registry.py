"""The method registry: REST method name (case-insensitive) → handler.

A handler is a plain function ``(ctx, params) -> result``. ``params`` is the decoded request
(form bracket syntax already turned into nested dicts/lists, JSON as is, ``auth`` removed).
It returns the ``result`` value of the success envelope, or a :class:`ListResult` for paginated
list methods, and raises :class:`~bitrix24_emulator.errors.RestError` for errors. A handler that
must do I/O (e.g. download a ``RECORD_URL``) may return an awaitable; the REST layer awaits it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bitrix24_emulator.errors import wrong_auth_type

if TYPE_CHECKING:
    from bitrix24_emulator.state import Portal

AuthKind = Literal["oauth", "webhook"]


@dataclass(frozen=True)
class Caller:
    """Who makes the request: an installed app (OAuth token) or an incoming webhook."""

    kind: AuthKind
    user_id: int
    client_id: str | None = None  # the app, for OAuth calls


@dataclass
class CallContext:
    """What a handler may use besides its parameters."""

    portal: Portal
    caller: Caller
    now: float  # unix time, from the emulator's clock
    base_url: str  # e.g. "http://127.0.0.1:8090", for URLs handlers hand out
    auth: str | None = None  # the access token of the request, for URLs that carry it


@dataclass
class ListResult:
    """A page of a list method: ``result`` plus ``total`` and ``next`` in the envelope."""

    items: list[Any]
    total: int
    next: int | None = None


Handler = Callable[[CallContext, dict[str, Any]], Any]


@dataclass(frozen=True)
class Method:
    """A registered method."""

    name: str
    handler: Handler
    app_only: bool = False
    scope: str = "basic"
    batchable: bool = True


@dataclass
class Registry:
    """Methods by lower-cased name."""

    methods: dict[str, Method] = field(default_factory=dict)

    def add(self, method: Method) -> None:
        """Register a method; a second registration of one name is a bug."""
        key = method.name.lower()
        if key in self.methods:
            raise ValueError(f"method {method.name} registered twice")
        self.methods[key] = method

    def get(self, name: str) -> Method | None:
        """The method called ``name`` (any case), or None."""
        return self.methods.get(name.lower())

    def invoke(self, name: str, ctx: CallContext, params: dict[str, Any]) -> Any:
        """Run a method after the app-only check; unknown names are the caller's job."""
        method = self.methods[name.lower()]
        if method.app_only and ctx.caller.kind != "oauth":
            raise wrong_auth_type()
        return method.handler(ctx, params)


REGISTRY = Registry()


def method(
    name: str, *, app_only: bool = False, scope: str = "basic", batchable: bool = True
) -> Callable[[Handler], Handler]:
    """Decorator that registers a handler in the global registry."""

    def register(handler: Handler) -> Handler:
        REGISTRY.add(Method(name, handler, app_only, scope, batchable))
        return handler

    return register
