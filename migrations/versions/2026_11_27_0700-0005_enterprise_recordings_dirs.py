"""Per-enterprise recordings directories; recording uploads become their own job kind

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 07:00:00.000000+00:00

``enterprises.recordings_dirs`` (a JSON list of absolute directories, empty by default) narrows
where an enterprise's recordings reported by path may be read from. Unfinished
``bitrix24.command`` jobs that attach a recording by path become ``bitrix24.upload_recording``
jobs (and back on downgrade): uploads no longer run in a portal's command lane.
"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMAND_JOB = "bitrix24.command"
UPLOAD_JOB = "bitrix24.upload_recording"
UNFINISHED = ("queued", "running", "dead")

_jobs = sa.table(
    "jobs",
    sa.column("id", sa.BigInteger()),
    sa.column("kind", sa.String()),
    sa.column("status", sa.String()),
    sa.column("payload", sa.JSON()),
)


def _is_upload(payload: Any) -> bool:
    if isinstance(payload, str):  # raw JSON text on SQLite
        payload = json.loads(payload)
    command = (payload or {}).get("command") or {}
    return (
        command.get("kind") == "attach_record"
        and not command.get("url")
        and bool(command.get("path"))
    )


def _move_uploads(from_kind: str, to_kind: str) -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_jobs.c.id, _jobs.c.payload).where(
            _jobs.c.kind == from_kind, _jobs.c.status.in_(UNFINISHED)
        )
    ).all()
    ids = [row.id for row in rows if _is_upload(row.payload)]
    if ids:
        connection.execute(sa.update(_jobs).where(_jobs.c.id.in_(ids)).values(kind=to_kind))


def upgrade() -> None:
    """Apply this revision."""
    op.add_column(
        "enterprises",
        sa.Column(
            "recordings_dirs",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            server_default=sa.text("'[]'"),
            nullable=False,
        ),
    )
    _move_uploads(COMMAND_JOB, UPLOAD_JOB)


def downgrade() -> None:
    """Revert this revision."""
    _move_uploads(UPLOAD_JOB, COMMAND_JOB)
    # Not in batch mode: SQLite (3.35+) drops a plain column in place, where a batch would
    # copy the table that bitrix24_integrations and ami_status refer to.
    op.drop_column("enterprises", "recordings_dirs")
