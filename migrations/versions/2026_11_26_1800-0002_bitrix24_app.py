"""Bitrix24 app lifecycle: shared rate budgets and one-time codes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 18:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "bitrix24_rate_budgets",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("tat", sa.Float(), nullable=False),
        sa.Column("slowdown", sa.Float(), nullable=False),
        sa.Column("penalised_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_bitrix24_rate_budgets")),
    )
    op.create_table(
        "bitrix24_one_time_codes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "enterprise_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("member_id", sa.String(length=64), nullable=True),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["enterprise_id"],
            ["enterprises.id"],
            name=op.f("fk_bitrix24_one_time_codes_enterprise_id_enterprises"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bitrix24_one_time_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_bitrix24_one_time_codes_code_hash")),
    )
    with op.batch_alter_table("bitrix24_one_time_codes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bitrix24_one_time_codes_kind_expires_at"),
            ["kind", "expires_at"],
            unique=False,
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("bitrix24_one_time_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bitrix24_one_time_codes_kind_expires_at"))
    op.drop_table("bitrix24_one_time_codes")
    op.drop_table("bitrix24_rate_budgets")
