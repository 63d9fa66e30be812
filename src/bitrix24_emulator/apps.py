"""Applications known to the portal: registration, installation state and event bindings."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

InstallMode = Literal["both", "event", "ui"]


@dataclass
class Binding:
    """One ``event.bind`` handler."""

    id: int
    event: str
    handler: str
    client_id: str
    auth_type: int = 0
    event_type: str = "online"

    def as_result(self) -> dict[str, Any]:
        """The item ``event.get`` returns (``auth_type`` a string, ``offline`` an int)."""
        return {
            "event": self.event,
            "handler": self.handler,
            "auth_type": str(self.auth_type),
            "offline": 1 if self.event_type == "offline" else 0,
        }


@dataclass
class App:
    """A local or Marketplace application registered with the portal."""

    id: int
    client_id: str
    client_secret: str
    handler_url: str  # install handler ("Path for initial installation")
    scopes: list[str]
    name: str = "callbridge"
    code: str = ""
    version: int = 1
    status: str = "L"  # L local, F free, P paid, S subscription... (§3.3)
    redirect_uri: str | None = None  # where /oauth/authorize/ sends the browser
    install_mode: InstallMode = "both"
    language_id: str = "en"
    installed: bool = False
    install_finished: bool = False
    application_token: str = ""
    installed_by: int = 1
    bindings: list[Binding] = field(default_factory=list)

    def scope_string(self, separator: str = ",") -> str:
        """Granted scopes as Bitrix24 writes them."""
        return separator.join(self.scopes)

    def public(self) -> dict[str, Any]:
        """The app as the inspection API shows it (secret included: this is a test double)."""
        return {
            "id": self.id,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "name": self.name,
            "code": self.code,
            "handler_url": self.handler_url,
            "redirect_uri": self.redirect_uri,
            "scopes": self.scopes,
            "version": self.version,
            "status": self.status,
            "install_mode": self.install_mode,
            "installed": self.installed,
            "install_finished": self.install_finished,
            "application_token": self.application_token,
            "bindings": [b.as_result() | {"id": b.id} for b in self.bindings],
        }


class AppRegistry:
    """Apps by client_id."""

    def __init__(self) -> None:
        self.apps: dict[str, App] = {}
        self._next_id = 1
        self._next_binding = 1

    def register(
        self,
        *,
        handler_url: str,
        scopes: list[str],
        client_id: str | None = None,
        client_secret: str | None = None,
        **extra: Any,
    ) -> App:
        """Add an app (or replace the one with the same client_id)."""
        app_id = self._next_id
        self._next_id += 1
        client_id = client_id or f"local.{secrets.token_hex(7)}.{secrets.randbelow(10**8):08d}"
        app = App(
            id=app_id,
            client_id=client_id,
            client_secret=client_secret or secrets.token_urlsafe(36)[:50],
            handler_url=handler_url,
            scopes=list(scopes),
            code=extra.pop("code", None) or client_id,
            **extra,
        )
        self.apps[client_id] = app
        return app

    def get(self, client_id: str | None) -> App | None:
        """The app with this client_id."""
        return self.apps.get(client_id) if client_id else None

    def installed(self) -> list[App]:
        """Apps currently installed."""
        return [a for a in self.apps.values() if a.installed]

    def new_binding_id(self) -> int:
        """A fresh ``event_handler_id``."""
        value = self._next_binding
        self._next_binding += 1
        return value
