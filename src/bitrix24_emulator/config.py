"""How an emulator instance behaves: portal identity, plan, token lifetimes, and the settings for
everything the spec marks UNCONFIRMED (defaults are the most likely real behaviour)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bitrix24_emulator.faults import FaultConfig

if TYPE_CHECKING:
    import httpx

    from bitrix24_emulator.clock import Clock

Plan = Literal["standard", "enterprise", "unlimited"]

# (bucket size, drain per second), spec §5.1.
PLAN_LIMITS: dict[str, tuple[int, float]] = {"standard": (50, 2.0), "enterprise": (250, 5.0)}


@dataclass
class Behaviour:
    """Choices where the docs are silent or disagree (spec §8); each default is the likeliest."""

    # §8.6: a second finish fails like an unknown call, because the registration is consumed.
    finish_twice: Literal["not_found", "repeat"] = "not_found"
    # §8.6: older docs say finish closes the card.
    finish_hides_card: bool = True
    # §1.2: ADD_TO_CHAT default of finish (1 in 2026 docs, 0 before).
    finish_add_to_chat_default: bool = True
    # §1.1: dedup window of register and whether a finished call still matches (2026 docs: yes).
    dedup_window: float = 1800.0
    dedup_include_finished: bool = True
    # §8.5: what register answers for CRM_ENTITY_TYPE/ID when nothing matched and CRM_CREATE=0.
    unmatched_entity_type: str | None = None
    unmatched_entity_id: int | None = None
    # §1.2: the docs' example shows CALL_START_DATE of the finish result as ``{}``.
    finish_start_date_as_object: bool = True
    # §8.4: status of ERROR_METHOD_NOT_FOUND and ERROR_HANDLER_ALREADY_EXIST.
    method_not_found_status: int = 404
    handler_exists_status: int = 400
    # §8.2, §8.3: statuses the SDKs disagree on.
    invalid_client_status: int = 400
    insufficient_scope_status: int = 403
    enforce_scopes: bool = True
    # §3.5: what a token the portal never issued gets.
    unknown_token_error: Literal["invalid_token", "NO_AUTH_FOUND"] = "invalid_token"
    # §8.1: refresh tokens are single use. The pre-2024 docs also killed the access token issued
    # with a used refresh token; the current docs dropped that, so it stays alive by default.
    refresh_token_single_use: bool = True
    revoke_access_on_refresh: bool = False
    # §8.8: whether show/hide/searchCrmEntities accept incoming webhooks.
    show_hide_allow_webhook: bool = True
    search_allow_webhook: bool = True
    # §2.2: telephony event examples carry auth[refresh_token]; docs say "not with all events".
    event_auth_refresh_token: bool = True
    # §2.7: scope separator in events and tokens (examples use commas).
    scope_separator: str = ","
    # §8.9: application_token changes on reinstall; handler timeout.
    new_application_token_on_reinstall: bool = True
    event_timeout: float = 10.0
    # §1.4 / §8.7: answer of the multipart upload to attachRecord's uploadUrl.
    upload_result: Literal["file_id", "true"] = "file_id"
    # Title of leads made by register's CRM_CREATE ({phone}, {direction}).
    lead_title: str = "{phone} - {direction} call"


@dataclass
class EmulatorConfig:
    """Everything that shapes one emulator instance."""

    domain: str | None = None  # None: the seed's portal domain, else example.bitrix24.ru
    member_id: str | None = None
    plan: Plan = "standard"
    seed: dict[str, Any] | None = None  # None: the default seed
    base_url: str | None = None  # None: taken from each request (scheme://host:port)
    timezone_offset_hours: int = 3
    access_token_lifetime: int = 3600
    refresh_token_lifetime: int = 180 * 86400
    code_lifetime: int = 30
    rate_limit: bool = True
    rate_limit_per_ip: bool = True  # §5.1: counted per portal and per source IP
    operating_limit: float = 480.0
    operating_window: float = 600.0
    operating_limit_enabled: bool = True
    method_costs: dict[str, float] = field(default_factory=dict)
    default_method_cost: float | None = None  # None: the handler's measured execution time
    webhook_user_id: int = 1
    webhook_code: str = "emulatorhook0001"
    webhook_scopes: tuple[str, ...] = (
        "crm",
        "telephony",
        "user",
        "user_basic",
        "im",
    )
    license: str = ""  # "" → derived from the plan
    request_log_size: int = 10_000
    delivery_log_size: int = 10_000
    random_seed: int | None = None
    behaviour: Behaviour = field(default_factory=Behaviour)
    faults: FaultConfig = field(default_factory=FaultConfig)
    clock: Clock | None = None
    http_client: httpx.AsyncClient | None = None  # outgoing deliveries; None: one of our own
