"""``event.bind``, ``event.unbind``, ``event.get`` (spec §2.1)."""

from __future__ import annotations

from typing import Any

from bitrix24_emulator.apps import App, Binding
from bitrix24_emulator.errors import RestError
from bitrix24_emulator.methods.params import opt_int, opt_str, upper_keys
from bitrix24_emulator.methods.registry import CallContext, method

KNOWN_EVENTS = frozenset(
    {
        "ONAPPINSTALL",
        "ONAPPUNINSTALL",
        "ONAPPUPDATE",
        "ONAPPTEST",
        "ONAPPPAYMENT",
        "ONEXTERNALCALLSTART",
        "ONEXTERNALCALLBACKSTART",
        "ONVOXIMPLANTCALLINIT",
        "ONVOXIMPLANTCALLSTART",
        "ONVOXIMPLANTCALLEND",
        "ONOFFLINEEVENT",
    }
)
# Families whose many events we accept without listing each one.
KNOWN_PREFIXES = ("ONCRM", "ONUSER", "ONTASK", "ONIM", "ONCALENDAR", "ONDISK", "ONSONET")


def is_known_event(name: str) -> bool:
    """Whether the portal has an event with this (upper-case) name."""
    return name in KNOWN_EVENTS or name.startswith(KNOWN_PREFIXES)


def _app(ctx: CallContext) -> App:
    app = ctx.portal.apps.get(ctx.caller.client_id)
    if app is None:  # app-only methods: the token always names an app
        raise RestError("APPLICATION_NOT_FOUND", "Application not found", 401)
    return app


def _is_admin(ctx: CallContext) -> bool:
    check = getattr(ctx.portal.users, "is_admin", None)
    return bool(check(ctx.caller.user_id)) if callable(check) else ctx.caller.user_id == 1


@method("event.bind", app_only=True)
def event_bind(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Bind a handler URL to an event for the calling app."""
    p = upper_keys(params)
    event = (opt_str(p, "EVENT") or "").upper()
    if not event or not is_known_event(event):
        raise RestError("ERROR_EVENT_NOT_FOUND", "Event not found", 400)
    handler = opt_str(p, "HANDLER")
    if handler is None:
        raise RestError("ERROR_ARGUMENT", "Argument 'handler' is null or empty", 400)
    auth_type = opt_int(p, "AUTH_TYPE") or 0
    event_type = (opt_str(p, "EVENT_TYPE") or "online").lower()
    if event_type == "offline" and not _is_admin(ctx):
        raise RestError(
            "ACCESS_DENIED",
            "Access denied! Offline events binding requires administrator access rights",
            403,
        )
    if auth_type and not _is_admin(ctx):
        raise RestError(
            "ACCESS_DENIED",
            "Access denied! Event binding with AUTH_TYPE requires administrator access rights",
            403,
        )
    app = _app(ctx)
    for b in app.bindings:
        if (b.event, b.handler, b.auth_type, b.event_type) == (
            event,
            handler,
            auth_type,
            event_type,
        ):
            raise RestError(
                "ERROR_HANDLER_ALREADY_EXIST",
                "Handler already exists!",
                ctx.portal.behaviour.handler_exists_status,
            )
    app.bindings.append(
        Binding(
            id=ctx.portal.apps.new_binding_id(),
            event=event,
            handler=handler,
            client_id=app.client_id,
            auth_type=auth_type,
            event_type=event_type,
        )
    )
    return True


@method("event.unbind", app_only=True)
def event_unbind(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Remove matching handlers; unspecified optional params match all."""
    p = upper_keys(params)
    event = (opt_str(p, "EVENT") or "").upper()
    handler = opt_str(p, "HANDLER")
    auth_type = opt_int(p, "AUTH_TYPE") if "AUTH_TYPE" in p else None
    event_type = (opt_str(p, "EVENT_TYPE") or "").lower() or None
    app = _app(ctx)
    kept = []
    for b in app.bindings:
        matches = (
            b.event == event
            and (handler is None or b.handler == handler)
            and (auth_type is None or b.auth_type == auth_type)
            and (event_type is None or b.event_type == event_type)
        )
        if not matches:
            kept.append(b)
    count = len(app.bindings) - len(kept)
    app.bindings = kept
    return {"count": count}


@method("event.get", app_only=True)
def event_get(ctx: CallContext, params: dict[str, Any]) -> Any:
    """The calling app's handlers."""
    return [b.as_result() for b in _app(ctx).bindings]
