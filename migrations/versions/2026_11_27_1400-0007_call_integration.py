"""Calls remember the Bitrix24 integration their commands go to

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 14:00:00.000000+00:00

``calls.integration_id`` is fixed when a call starts: its later commands go there (or nowhere),
never to an integration the enterprise is linked to afterwards. Calls stored before it get the
integration their first job went to; a call still going on without any job, the one its later
commands would have gone to until now (the enterprise's first live integration).

A plain column, without a foreign key: SQLite adds a constraint only by copying the table, and
dropping the old ``calls`` (foreign keys on) would empty ``bitrix24_calls`` and unlink jobs.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = ("active", "needs_reauth")

_calls = sa.table(
    "calls",
    sa.column("id", sa.BigInteger()),
    sa.column("enterprise_id", sa.BigInteger()),
    sa.column("state", sa.String()),
    sa.column("integration_id", sa.BigInteger()),
)
_jobs = sa.table(
    "jobs",
    sa.column("id", sa.BigInteger()),
    sa.column("call_id", sa.BigInteger()),
    sa.column("integration_id", sa.BigInteger()),
)
_integrations = sa.table(
    "bitrix24_integrations",
    sa.column("id", sa.BigInteger()),
    sa.column("enterprise_id", sa.BigInteger()),
    sa.column("status", sa.String()),
)


def _remember_integrations() -> None:
    of_the_call = sa.select(_jobs.c.integration_id).where(
        _jobs.c.call_id == _calls.c.id, _jobs.c.integration_id.is_not(None)
    )
    # Only the calls that had jobs: rewriting every row of calls would cost far more.
    op.execute(
        sa.update(_calls)
        .where(of_the_call.exists())
        .values(integration_id=of_the_call.order_by(_jobs.c.id).limit(1).scalar_subquery())
    )
    first_live = (
        sa.select(sa.func.min(_integrations.c.id))
        .where(
            _integrations.c.enterprise_id == _calls.c.enterprise_id,
            _integrations.c.status.in_(LIVE),
        )
        .scalar_subquery()
    )
    op.execute(
        sa.update(_calls)
        .where(_calls.c.integration_id.is_(None), _calls.c.state == "active")
        .values(integration_id=first_live)
    )


def upgrade() -> None:
    """Apply this revision."""
    # Not in batch mode (see the module docstring): SQLite adds a plain column in place.
    op.add_column(
        "calls",
        sa.Column(
            "integration_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
    )
    _remember_integrations()


def downgrade() -> None:
    """Revert this revision."""
    # SQLite (3.35+) drops a plain column in place.
    op.drop_column("calls", "integration_id")
