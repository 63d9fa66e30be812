"""Initial schema: the tables of DESIGN.md §3

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-26 16:57:59.881127+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""

    op.create_table(
        "enterprises",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("number", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("webhook_secret_enc", sa.Text(), nullable=True),
        sa.Column("ami_url_enc", sa.Text(), nullable=True),
        sa.Column(
            "settings",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enterprises")),
        sa.UniqueConstraint("number", name=op.f("uq_enterprises_number")),
    )
    op.create_table(
        "bitrix24_integrations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "enterprise_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("client_endpoint", sa.String(length=512), nullable=False),
        sa.Column("server_endpoint", sa.String(length=512), nullable=False),
        sa.Column("access_token_enc", sa.Text(), nullable=True),
        sa.Column("refresh_token_enc", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("application_token_enc", sa.Text(), nullable=True),
        sa.Column("scope", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=False),
        sa.Column(
            "settings",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["enterprise_id"],
            ["enterprises.id"],
            name=op.f("fk_bitrix24_integrations_enterprise_id_enterprises"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bitrix24_integrations")),
        sa.UniqueConstraint("member_id", name=op.f("uq_bitrix24_integrations_member_id")),
    )
    with op.batch_alter_table("bitrix24_integrations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bitrix24_integrations_enterprise_id"), ["enterprise_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_bitrix24_integrations_status"), ["status"], unique=False
        )

    op.create_table(
        "calls",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "enterprise_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("linkedid", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("external_number", sa.String(length=64), nullable=False),
        sa.Column("line_number", sa.String(length=64), nullable=False),
        sa.Column(
            "ringing",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("answered_by", sa.String(length=64), nullable=True),
        sa.Column("bitrix24_call_id", sa.String(length=255), nullable=True),
        sa.Column("crm_entity_type", sa.String(length=32), nullable=True),
        sa.Column("crm_entity_id", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status_code", sa.String(length=16), nullable=True),
        sa.Column("talk_seconds", sa.Integer(), nullable=False),
        sa.Column("recording", sa.Text(), nullable=True),
        sa.Column(
            "model",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["enterprise_id"],
            ["enterprises.id"],
            name=op.f("fk_calls_enterprise_id_enterprises"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calls")),
        sa.UniqueConstraint(
            "enterprise_id", "linkedid", name=op.f("uq_calls_enterprise_id_linkedid")
        ),
    )
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_calls_state_updated_at"), ["state", "updated_at"], unique=False
        )

    op.create_table(
        "pbx_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "enterprise_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("linkedid", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["enterprise_id"],
            ["enterprises.id"],
            name=op.f("fk_pbx_events_enterprise_id_enterprises"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pbx_events")),
        sa.UniqueConstraint(
            "enterprise_id",
            "source",
            "event_id",
            name=op.f("uq_pbx_events_enterprise_id_source_event_id"),
        ),
    )
    with op.batch_alter_table("pbx_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pbx_events_enterprise_id_linkedid"),
            ["enterprise_id", "linkedid"],
            unique=False,
        )

    op.create_table(
        "api_calls",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "integration_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("method", sa.String(length=255), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(length=128), nullable=True),
        sa.Column("operating", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["integration_id"],
            ["bitrix24_integrations.id"],
            name=op.f("fk_api_calls_integration_id_bitrix24_integrations"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_calls")),
    )
    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_api_calls_integration_id_started_at"),
            ["integration_id", "started_at"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_api_calls_started_at"), ["started_at"], unique=False)

    op.create_table(
        "bitrix24_calls",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("call_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "integration_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("leg", sa.Integer(), nullable=False),
        sa.Column("external_call_id", sa.String(length=255), nullable=False),
        sa.Column("bitrix24_call_id", sa.String(length=255), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_code", sa.String(length=16), nullable=True),
        sa.Column("duration", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"],
            ["calls.id"],
            name=op.f("fk_bitrix24_calls_call_id_calls"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["integration_id"],
            ["bitrix24_integrations.id"],
            name=op.f("fk_bitrix24_calls_integration_id_bitrix24_integrations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bitrix24_calls")),
        sa.UniqueConstraint("call_id", "leg", name=op.f("uq_bitrix24_calls_call_id_leg")),
        sa.UniqueConstraint("external_call_id", name=op.f("uq_bitrix24_calls_external_call_id")),
    )
    with op.batch_alter_table("bitrix24_calls", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bitrix24_calls_integration_id_bitrix24_call_id"),
            ["integration_id", "bitrix24_call_id"],
            unique=False,
        )

    op.create_table(
        "bitrix24_users",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "integration_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("extension", sa.String(length=32), nullable=True),
        sa.Column("mobile", sa.String(length=32), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["integration_id"],
            ["bitrix24_integrations.id"],
            name=op.f("fk_bitrix24_users_integration_id_bitrix24_integrations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bitrix24_users")),
        sa.UniqueConstraint(
            "integration_id", "user_id", name=op.f("uq_bitrix24_users_integration_id_user_id")
        ),
    )
    with op.batch_alter_table("bitrix24_users", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bitrix24_users_integration_id_extension"),
            ["integration_id", "extension"],
            unique=False,
        )

    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=128), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ordering_key", sa.String(length=255), nullable=True),
        sa.Column(
            "depends_on", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "integration_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("call_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_by", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["call_id"], ["calls.id"], name=op.f("fk_jobs_call_id_calls"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["depends_on"], ["jobs.id"], name=op.f("fk_jobs_depends_on_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["integration_id"],
            ["bitrix24_integrations.id"],
            name=op.f("fk_jobs_integration_id_bitrix24_integrations"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_call_id"), ["call_id"], unique=False)
        batch_op.create_index(
            "ix_jobs_claimable",
            ["run_after", "id"],
            unique=False,
            postgresql_where=sa.text("status = 'queued'"),
            sqlite_where=sa.text("status = 'queued'"),
        )
        batch_op.create_index(batch_op.f("ix_jobs_depends_on"), ["depends_on"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_jobs_integration_id_status"), ["integration_id", "status"], unique=False
        )
        batch_op.create_index(
            "ix_jobs_ordering_key_pending",
            ["ordering_key", "id"],
            unique=False,
            postgresql_where=sa.text("status IN ('queued', 'running', 'dead')"),
            sqlite_where=sa.text("status IN ('queued', 'running', 'dead')"),
        )
        batch_op.create_index(
            batch_op.f("ix_jobs_status_lease_expires_at"),
            ["status", "lease_expires_at"],
            unique=False,
        )


def downgrade() -> None:
    """Revert this revision."""

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_status_lease_expires_at"))
        batch_op.drop_index(
            "ix_jobs_ordering_key_pending",
            postgresql_where=sa.text("status IN ('queued', 'running', 'dead')"),
            sqlite_where=sa.text("status IN ('queued', 'running', 'dead')"),
        )
        batch_op.drop_index(batch_op.f("ix_jobs_integration_id_status"))
        batch_op.drop_index(batch_op.f("ix_jobs_depends_on"))
        batch_op.drop_index(
            "ix_jobs_claimable",
            postgresql_where=sa.text("status = 'queued'"),
            sqlite_where=sa.text("status = 'queued'"),
        )
        batch_op.drop_index(batch_op.f("ix_jobs_call_id"))

    op.drop_table("jobs")
    with op.batch_alter_table("bitrix24_users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bitrix24_users_integration_id_extension"))

    op.drop_table("bitrix24_users")
    with op.batch_alter_table("bitrix24_calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bitrix24_calls_integration_id_bitrix24_call_id"))

    op.drop_table("bitrix24_calls")
    with op.batch_alter_table("api_calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_calls_started_at"))
        batch_op.drop_index(batch_op.f("ix_api_calls_integration_id_started_at"))

    op.drop_table("api_calls")
    with op.batch_alter_table("pbx_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pbx_events_enterprise_id_linkedid"))

    op.drop_table("pbx_events")
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calls_state_updated_at"))

    op.drop_table("calls")
    with op.batch_alter_table("bitrix24_integrations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bitrix24_integrations_status"))
        batch_op.drop_index(batch_op.f("ix_bitrix24_integrations_enterprise_id"))

    op.drop_table("bitrix24_integrations")
    op.drop_table("enterprises")
