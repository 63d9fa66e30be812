"""Structured logging: one set of processors for structlog and the standard library.

Every log line, ours or a library's (uvicorn, SQLAlchemy, Alembic, httpx), passes through the
same chain and ends in one handler on the root logger: a readable console renderer in dev, one
JSON object per line in production. The last step before rendering, :func:`redact_secrets`,
replaces the values of secret-looking keys (tokens, passwords, Bitrix24 ``AUTH_ID``…) at any
depth, and credentials inside URLs, so secrets never reach a log.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from callbridge.config import ENV_PREFIX, LogFormat
from callbridge.domain.errors import ConfigurationError

REDACTED = "[redacted]"

# Keys that are secret as a whole (compared lower-cased).
_SECRET_KEYS = frozenset(
    {
        "access_token",
        "refresh_token",
        "application_token",
        "auth_id",
        "refresh_id",
        "client_secret",
        "api_key",
        "apikey",
        "encryption_keys",
        "fernet_key",
        "cookie",
        "set-cookie",
    }
)
# A key is secret when any of its words is one of these: `auth[access_token]`, `webhook_secret`.
_SECRET_WORDS = frozenset(
    {"token", "tokens", "secret", "secrets", "password", "passwd", "auth", "authorization"}
)
# ... or ends with one of these, for keys written without separators: `accessToken`.
_SECRET_SUFFIXES = ("token", "secret", "password")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")

# Credentials inside strings: `scheme://user:password@host` and secret query parameters.
_URL_PASSWORD = re.compile(r"(?P<prefix>[a-z][a-z0-9+.\-]*://[^\s:/@]+:)[^\s@/]+@", re.I)
_QUERY_SECRET = re.compile(
    r"(?P<prefix>[?&](?:auth|access_token|refresh_token|application_token|client_secret"
    r"|auth_id|refresh_id|token|password|code)=)[^&\s\"']+",
    re.I,
)

_MAX_DEPTH = 20
_HANDLER_NAME = "callbridge"


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret (case-insensitive)."""
    if not isinstance(key, str):
        return False
    lowered = key.lower()
    if lowered in _SECRET_KEYS or lowered.endswith(_SECRET_SUFFIXES):
        return True
    return any(word in _SECRET_WORDS for word in _WORD_SPLIT.split(lowered) if word)


def redact_text(text: str) -> str:
    """Hide passwords in URLs and secret query parameters inside free text."""
    text = _URL_PASSWORD.sub(rf"\g<prefix>{REDACTED}@", text)
    return _QUERY_SECRET.sub(rf"\g<prefix>{REDACTED}", text)


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with secrets replaced, at any depth of dicts, lists and tuples."""
    if _depth > _MAX_DEPTH:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            key: REDACTED if is_secret_key(key) else redact(item, _depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(item, _depth + 1) for item in value]
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace secret values in the whole event, keys and text alike."""
    redacted: EventDict = {}
    for key, value in event_dict.items():
        if key.startswith("_"):  # structlog's own bookkeeping (`_record`, `_from_structlog`)
            redacted[key] = value
        elif is_secret_key(key):
            redacted[key] = REDACTED
        else:
            redacted[key] = redact(value)
    return redacted


class _CurrentStderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of the call (as logging.lastResort)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer(log_format: LogFormat, stream: TextIO) -> Processor:
    if log_format is LogFormat.JSON:
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(colors=stream.isatty())


# Library loggers and the level they log at (their noise is rarely useful at INFO).
_LIBRARY_LEVELS = {
    "uvicorn": logging.INFO,
    "uvicorn.error": logging.INFO,
    "uvicorn.access": logging.INFO,
    "alembic": logging.WARNING,  # the CLI reports migrations itself
    "sqlalchemy": logging.WARNING,
    "sqlalchemy.engine": logging.WARNING,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "asyncio": logging.WARNING,
}


def configure_logging(
    log_format: LogFormat = LogFormat.CONSOLE,
    level: str | int = "INFO",
    *,
    stream: TextIO | None = None,
) -> None:
    """Route structlog and standard-library logging through one redacting chain.

    ``stream`` defaults to the current ``sys.stderr``. Calling this again replaces the handler
    installed by the previous call and leaves other root handlers alone.
    """
    root = logging.getLogger()
    try:
        root.setLevel(level.upper() if isinstance(level, str) else level)
    except ValueError:
        raise ConfigurationError(
            f"{ENV_PREFIX}LOG_LEVEL: unknown level {level!r} (use DEBUG, INFO, WARNING or ERROR)"
        ) from None
    renderer = _renderer(log_format, stream if stream is not None else sys.stderr)
    shared = _shared_processors()
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Tests and the CLI reconfigure logging; cached loggers would keep the old chain.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Render tracebacks to text first, so the redactor sees them too.
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    )
    handler.setFormatter(formatter)
    handler.set_name(_HANDLER_NAME)

    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)

    for name, library_level in _LIBRARY_LEVELS.items():
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()  # uvicorn installs its own; ours is on the root
        library_logger.propagate = True
        library_logger.setLevel(max(library_level, root.level))


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger bound to ``name``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
