"""AMI listeners: the last heartbeat while connected, for ending orphaned calls

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 08:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("ami_status", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_pbx", sa.String(length=255), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("ami_status", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_pbx")
        batch_op.drop_column("heartbeat_at")
