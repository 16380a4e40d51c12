"""Migrations name the database of their source's store they move (SQL Server: one of many databases in one
store; PostgreSQL: a cluster, by its system identifier). Null for migrations made before: the store's only
database.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (both SQLite and PostgreSQL take it): no table is copied, the events' triggers stay.
    op.add_column("migrations", sa.Column("database", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("migrations") as batch:
        batch.drop_column("database")
