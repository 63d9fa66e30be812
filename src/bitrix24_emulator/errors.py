"""Errors the emulated portal answers with.

Tree::

    EmulatorError
    └── RestError     an error envelope ``{"error", "error_description"}`` with an HTTP status
"""

from __future__ import annotations


class EmulatorError(Exception):
    """Base of every error raised by the emulator."""


class RestError(EmulatorError):
    """A REST error answered with the documented envelope and HTTP status."""

    def __init__(self, code: str, description: str, http_status: int = 400) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.http_status = http_status

    def envelope(self) -> dict[str, str]:
        """The JSON body Bitrix24 sends for this error."""
        return {"error": self.code, "error_description": self.description}


def error_core(description: str) -> RestError:
    """The generic method-level error (``ERROR_CORE``, HTTP 400)."""
    return RestError("ERROR_CORE", description, 400)


def wrong_auth_type() -> RestError:
    """An app-only method called with webhook auth."""
    return RestError("WRONG_AUTH_TYPE", "Current authorization type is denied for this method", 403)
