"""The tables of DESIGN.md §3, as SQLAlchemy 2 declarative models.

Every constraint and index is named by ``NAMING_CONVENTION`` so that Alembic's SQLite batch mode
and PostgreSQL produce the same names. Secrets (tokens, webhook secrets) are stored encrypted;
the ``*_enc`` columns hold Fernet tokens, never clear text.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from callbridge.storage.types import BigIntId, JsonDoc, UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with the shared naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JsonDoc}


class TimestampMixin:
    """``created_at`` / ``updated_at`` maintained by the ORM."""

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Enterprise(TimestampMixin, Base):
    """A PBX customer of the bridge operator."""

    __tablename__ = "enterprises"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    webhook_secret_enc: Mapped[str | None] = mapped_column(Text)
    ami_url_enc: Mapped[str | None] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Absolute directories this enterprise's recordings reported by path may be read from,
    #: each inside ``CALLBRIDGE_RECORDINGS_DIRS``; empty: the bridge's (see worker.recordings).
    recordings_dirs: Mapped[list[str]] = mapped_column(
        JsonDoc, default=list, server_default=text("'[]'")
    )


class IntegrationStatus(StrEnum):
    """Lifecycle of a Bitrix24 integration."""

    ACTIVE = "active"
    NEEDS_REAUTH = "needs_reauth"  # tokens rejected: jobs pause until an admin reconnects
    UNINSTALLED = "uninstalled"  # ONAPPUNINSTALL received: kept, never deleted
    PORTAL_DELETED = "portal_deleted"


class Bitrix24Integration(TimestampMixin, Base):
    """One enterprise ↔ portal connection, with its OAuth tokens (encrypted)."""

    __tablename__ = "bitrix24_integrations"
    __table_args__ = (Index(None, "enterprise_id"), Index(None, "status"))

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    enterprise_id: Mapped[int | None] = mapped_column(
        ForeignKey("enterprises.id", ondelete="RESTRICT")
    )
    member_id: Mapped[str] = mapped_column(String(64), unique=True)
    domain: Mapped[str] = mapped_column(String(255))
    client_endpoint: Mapped[str] = mapped_column(String(512))
    server_endpoint: Mapped[str] = mapped_column(String(512), default="")
    access_token_enc: Mapped[str | None] = mapped_column(Text)
    refresh_token_enc: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None]
    application_token_enc: Mapped[str | None] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(String(1024), default="")
    status: Mapped[str] = mapped_column(String(32), default=IntegrationStatus.ACTIVE.value)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Bitrix24User(Base):
    """A Bitrix24 user and the extension / mobile number that reach them, synced from the portal."""

    __tablename__ = "bitrix24_users"
    __table_args__ = (
        UniqueConstraint("integration_id", "user_id"),
        Index(None, "integration_id", "extension"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    integration_id: Mapped[int] = mapped_column(
        ForeignKey("bitrix24_integrations.id", ondelete="CASCADE")
    )
    user_id: Mapped[int] = mapped_column(Integer)
    extension: Mapped[str | None] = mapped_column(String(32))
    mobile: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    synced_at: Mapped[datetime] = mapped_column(default=utcnow)


class Call(TimestampMixin, Base):
    """One PBX call (its linkedid) and what Bitrix24 knows of it."""

    __tablename__ = "calls"
    __table_args__ = (
        UniqueConstraint("enterprise_id", "linkedid"),
        Index(None, "state", "updated_at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="RESTRICT"))
    linkedid: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(32), default="new")
    direction: Mapped[str] = mapped_column(String(16), default="inbound")
    external_number: Mapped[str] = mapped_column(String(64), default="")
    line_number: Mapped[str] = mapped_column(String(64), default="")
    ringing: Mapped[dict[str, Any]] = mapped_column(default=dict)
    answered_by: Mapped[str | None] = mapped_column(String(64))
    bitrix24_call_id: Mapped[str | None] = mapped_column(String(255))
    crm_entity_type: Mapped[str | None] = mapped_column(String(32))
    crm_entity_id: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime | None]
    answered_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    status_code: Mapped[str | None] = mapped_column(String(16))
    talk_seconds: Mapped[int] = mapped_column(Integer, default=0)
    recording: Mapped[str | None] = mapped_column(Text)
    model: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the domain Call, serialised
    #: The integration the call's Bitrix24 commands go to, fixed when it starts (None: none).
    #: Not indexed: every write of call tracking would update the index too, for no query.
    #: No foreign key: SQLite cannot add one to a table without copying the table, and
    #: callbridge never deletes an integration. An id that is not one of the enterprise's live
    #: integrations (gone, uninstalled, moved) means the same as None: nothing is sent.
    integration_id: Mapped[int | None] = mapped_column(BigIntId)


class Bitrix24Call(TimestampMixin, Base):
    """One Bitrix24 registration of a call leg (a call is split into legs by transfers)."""

    __tablename__ = "bitrix24_calls"
    __table_args__ = (
        UniqueConstraint("external_call_id"),
        UniqueConstraint("call_id", "leg"),
        Index(None, "integration_id", "bitrix24_call_id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    integration_id: Mapped[int] = mapped_column(
        ForeignKey("bitrix24_integrations.id", ondelete="CASCADE")
    )
    leg: Mapped[int] = mapped_column(Integer, default=0)
    external_call_id: Mapped[str] = mapped_column(String(255))
    bitrix24_call_id: Mapped[str | None] = mapped_column(String(255))
    user_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32), default="pending")
    status_code: Mapped[str | None] = mapped_column(String(16))
    duration: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None]


class PbxEvent(Base):
    """The inbox: every accepted PBX event, once per (enterprise, source, event id)."""

    __tablename__ = "pbx_events"
    __table_args__ = (
        UniqueConstraint("enterprise_id", "source", "event_id"),
        Index(None, "enterprise_id", "linkedid"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    enterprise_id: Mapped[int] = mapped_column(ForeignKey("enterprises.id", ondelete="RESTRICT"))
    source: Mapped[str] = mapped_column(String(32))  # "webhook", "ami:<connection>"
    event_id: Mapped[str] = mapped_column(String(255))
    linkedid: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurred_at: Mapped[datetime | None]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    handled_at: Mapped[datetime | None]


class JobStatus(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"  # waiting for run_after, its dependency, or its ordering key
    RUNNING = "running"  # claimed; the lease says until when
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # retry policy exhausted or a permanent error: kept, visible, retryable
    CANCELLED = "cancelled"  # its dependency died or its integration was removed


class Job(Base):
    """The outbox: work for the worker, durable across crashes."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')", name="status"
        ),
        # Claim scans queued jobs by due time; the partial index keeps it small.
        Index(
            "ix_jobs_claimable",
            "run_after",
            "id",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
        # Claim asks "is an earlier job of this key still pending?"; finished jobs never are,
        # so they stay out of the index and the check stays cheap however long the history.
        Index(
            "ix_jobs_ordering_key_pending",
            "ordering_key",
            "id",
            postgresql_where=text("status IN ('queued', 'running', 'dead')"),
            sqlite_where=text("status IN ('queued', 'running', 'dead')"),
        ),
        Index(None, "depends_on"),
        Index(None, "status", "lease_expires_at"),
        Index(None, "integration_id", "status"),
        Index(None, "call_id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    ordering_key: Mapped[str | None] = mapped_column(String(255))
    depends_on: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    integration_id: Mapped[int | None] = mapped_column(
        ForeignKey("bitrix24_integrations.id", ondelete="SET NULL")
    )
    call_id: Mapped[int | None] = mapped_column(ForeignKey("calls.id", ondelete="SET NULL"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=10)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    locked_by: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]


class ApiCall(Base):
    """The log of every request sent to Bitrix24 (tokens never stored)."""

    __tablename__ = "api_calls"
    __table_args__ = (Index(None, "integration_id", "started_at"), Index(None, "started_at"))

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    integration_id: Mapped[int | None] = mapped_column(
        ForeignKey("bitrix24_integrations.id", ondelete="SET NULL")
    )
    method: Mapped[str] = mapped_column(String(255))
    batch_size: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(128))
    operating: Mapped[float | None] = mapped_column(Float)


class Bitrix24RateBudget(Base):
    """A portal's request budget, shared by every process (GCRA: one theoretical arrival time).

    ``tat`` is the "theoretical arrival time" of the next request in unix seconds; a request may
    go when ``tat - burst <= now``. ``slowdown`` (≤ 1) scales the drain rate down after the portal
    answered QUERY_LIMIT_EXCEEDED; it recovers linearly from ``penalised_at``.
    """

    __tablename__ = "bitrix24_rate_budgets"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    tat: Mapped[float] = mapped_column(Float, default=0.0)
    slowdown: Mapped[float] = mapped_column(Float, default=1.0)
    penalised_at: Mapped[float] = mapped_column(Float, default=0.0)


class Bitrix24OneTimeCode(Base):
    """Single-use secrets of the app lifecycle: OAuth ``state`` nonces and enterprise link codes.

    Only a SHA-256 of the code is stored: a leaked table does not let anyone link a portal.
    """

    __tablename__ = "bitrix24_one_time_codes"
    __table_args__ = (UniqueConstraint("code_hash"), Index(None, "kind", "expires_at"))

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # "oauth_state", "link_code", "link_form"
    code_hash: Mapped[str] = mapped_column(String(64))
    enterprise_id: Mapped[int | None] = mapped_column(
        ForeignKey("enterprises.id", ondelete="CASCADE")
    )
    member_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class AmiStatus(Base):
    """What an enterprise's AMI listener last reported, written by the process that holds it.

    One row per enterprise. ``updated_at`` is refreshed every few seconds while a listener runs,
    so a row that stopped changing belongs to a process that died (the CLI says "stale").
    """

    __tablename__ = "ami_status"

    enterprise_id: Mapped[int] = mapped_column(
        BigIntId,
        ForeignKey("enterprises.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    )
    # connecting | connected | disconnected | unreachable | refused | stopped
    state: Mapped[str] = mapped_column(String(16))
    pbx: Mapped[str] = mapped_column(String(255), default="")  # host:port, never the secret
    holder: Mapped[str] = mapped_column(String(128), default="")
    last_error: Mapped[str | None] = mapped_column(Text)
    reconnects: Mapped[int] = mapped_column(Integer, default=0)
    events_in: Mapped[int] = mapped_column(BigInteger, default=0)
    last_event_at: Mapped[datetime | None]
    since: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The last heartbeat of a listener connected to ``heartbeat_pbx``, in that PBX's clock: the
    # calls it had not ended were alive then. Kept while later reports are not connected, so
    # a standby that takes over can end what ended after it (``pbx`` is then its own).
    heartbeat_at: Mapped[datetime | None]
    heartbeat_pbx: Mapped[str | None] = mapped_column(String(255))
