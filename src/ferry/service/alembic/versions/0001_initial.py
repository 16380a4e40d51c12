"""The state store's first schema: migrations, their append-only events, snapshots, targets.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The schema is written out here rather than imported from store.py: a migration must keep describing
# the schema as it was at this revision, whatever the code becomes later.


def upgrade() -> None:
    op.create_table(
        "migrations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("last_backup", sa.Text, nullable=True),
        sa.Column("status", sa.JSON, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seq", sa.Integer, nullable=False),
        sa.UniqueConstraint("name", name="uq_migrations_name"),
    )
    op.create_index("ix_migrations_state", "migrations", ["state"])
    op.create_index("ix_migrations_target", "migrations", ["target"])
    op.create_table(
        "events",
        sa.Column(
            "migration_id",
            sa.String(32),
            sa.ForeignKey("migrations.id", name="fk_events_migration"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_table(
        "snapshots",
        sa.Column(
            "migration_id",
            sa.String(32),
            sa.ForeignKey("migrations.id", name="fk_snapshots_migration"),
            primary_key=True,
        ),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "targets",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    _forbid_event_changes()


def _forbid_event_changes() -> None:
    """The event log is append-only, and the database itself refuses an UPDATE or DELETE of an event."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION ferry_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'events are append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events "
            "FOR EACH ROW EXECUTE FUNCTION ferry_events_append_only()"
        )
        return
    for action in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER events_no_{action.lower()} BEFORE {action} ON events "
            "BEGIN SELECT RAISE(ABORT, 'events are append-only'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_append_only ON events")
        op.execute("DROP FUNCTION IF EXISTS ferry_events_append_only()")
    op.drop_table("targets")
    op.drop_table("snapshots")
    op.drop_table("events")
    op.drop_index("ix_migrations_target", "migrations")
    op.drop_index("ix_migrations_state", "migrations")
    op.drop_table("migrations")
