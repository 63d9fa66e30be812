"""Logging: one chain for structlog and the standard library, and secrets never reach a line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from callbridge.config import LogFormat
from callbridge.domain.errors import ConfigurationError
from callbridge.logging import (
    REDACTED,
    configure_logging,
    get_logger,
    is_secret_key,
    redact,
    redact_text,
)

SECRET = "s3cr3t-value-4242"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger and structlog back the way the test found them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture
def stream(restore_logging: None) -> io.StringIO:
    return io.StringIO()


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


class TestSecretKeys:
    @pytest.mark.parametrize(
        "key",
        [
            "token",
            "access_token",
            "REFRESH_TOKEN",
            "application_token",
            "AUTH_ID",
            "REFRESH_ID",
            "auth",
            "Authorization",
            "password",
            "client_secret",
            "webhook_secret",
            "auth[access_token]",
            "accessToken",
            "encryption_keys",
        ],
    )
    def test_secret_keys_are_recognised_in_any_case(self, key: str) -> None:
        assert is_secret_key(key)

    @pytest.mark.parametrize(
        "key", ["member_id", "domain", "event", "call_id", "expires_at", "user_id", "phone"]
    )
    def test_ordinary_keys_are_kept(self, key: str) -> None:
        assert not is_secret_key(key)


class TestRedact:
    def test_nested_dicts_and_lists(self) -> None:
        payload = {
            "event": "ONEXTERNALCALLSTART",
            "auth": {"access_token": SECRET, "member_id": "m1"},
            "data": {"items": [{"Password": SECRET, "phone": "+7900"}]},
            "Auth_Id": SECRET,
        }

        redacted = redact(payload)

        assert SECRET not in repr(redacted)
        assert redacted["event"] == "ONEXTERNALCALLSTART"
        assert redacted["auth"] == REDACTED
        assert redacted["data"]["items"][0] == {"Password": REDACTED, "phone": "+7900"}

    def test_urls_lose_passwords_and_secret_query_parameters(self) -> None:
        text = (
            f"postgresql+asyncpg://bridge:{SECRET}@db/callbridge and "
            f"https://portal.bitrix24.ru/rest/user.get.json?auth={SECRET}&ID=1 and "
            f"https://oauth.bitrix.info/oauth/token/?grant_type=refresh_token&refresh_token={SECRET}"
        )

        redacted = redact_text(text)

        assert SECRET not in redacted
        assert "postgresql+asyncpg://bridge:[redacted]@db/callbridge" in redacted
        assert "ID=1" in redacted
        assert "grant_type=refresh_token" in redacted


class TestConfigureLogging:
    def test_json_lines_without_secrets(self, stream: io.StringIO) -> None:
        configure_logging(LogFormat.JSON, stream=stream)

        get_logger("callbridge.test").info(
            "token refreshed",
            member_id="m1",
            access_token=SECRET,
            response={"result": {"refresh_token": SECRET, "expires_in": 3600}},
        )

        [line] = _json_lines(stream)
        assert SECRET not in stream.getvalue()
        assert line["event"] == "token refreshed"
        assert line["level"] == "info"
        assert line["logger"] == "callbridge.test"
        assert line["member_id"] == "m1"
        assert line["access_token"] == REDACTED
        assert line["response"] == {"result": {"refresh_token": REDACTED, "expires_in": 3600}}
        assert "timestamp" in line

    def test_standard_library_loggers_use_the_same_chain(self, stream: io.StringIO) -> None:
        configure_logging(LogFormat.JSON, stream=stream)

        logging.getLogger("uvicorn.error").info("started on %s", "127.0.0.1:8000")
        logging.getLogger("httpx").warning("GET https://p.bitrix24.ru/rest/x.json?auth=%s", SECRET)

        lines = _json_lines(stream)
        assert [line["logger"] for line in lines] == ["uvicorn.error", "httpx"]
        assert lines[0]["event"] == "started on 127.0.0.1:8000"
        assert SECRET not in stream.getvalue()

    def test_tracebacks_are_redacted_too(self, stream: io.StringIO) -> None:
        configure_logging(LogFormat.JSON, stream=stream)

        try:
            raise ValueError(f"cannot connect to postgresql://u:{SECRET}@db/x")
        except ValueError:
            get_logger("callbridge.test").exception("connection failed")

        [line] = _json_lines(stream)
        assert "ValueError" in str(line["exception"])
        assert SECRET not in stream.getvalue()

    def test_console_format_is_readable_and_redacted(self, stream: io.StringIO) -> None:
        configure_logging(LogFormat.CONSOLE, stream=stream)

        get_logger("callbridge.test").warning("install received", application_token=SECRET)

        output = stream.getvalue()
        assert "install received" in output
        assert "application_token" in output
        assert SECRET not in output
        assert not output.lstrip().startswith("{")

    def test_level_filters_lines(self, stream: io.StringIO) -> None:
        configure_logging(LogFormat.JSON, "WARNING", stream=stream)

        log = get_logger("callbridge.test")
        log.info("hidden")
        log.warning("shown")

        assert [line["event"] for line in _json_lines(stream)] == ["shown"]

    def test_reconfiguring_replaces_the_previous_handler(self, stream: io.StringIO) -> None:
        configure_logging(LogFormat.JSON, stream=io.StringIO())
        configure_logging(LogFormat.JSON, stream=stream)

        get_logger("callbridge.test").info("once")

        assert len(_json_lines(stream)) == 1
        ours = [h for h in logging.getLogger().handlers if h.get_name() == "callbridge"]
        assert len(ours) == 1

    def test_unknown_level_names_the_variable(self, restore_logging: None) -> None:
        with pytest.raises(ConfigurationError, match="CALLBRIDGE_LOG_LEVEL"):
            configure_logging(LogFormat.JSON, "LOUD")
