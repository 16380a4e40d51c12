"""The state store's tables (kept in step with the alembic migrations next to this module) and how it is
opened: SQLite (a writer and a reader engine, BEGIN IMMEDIATE for writes) or PostgreSQL by URL, the schema
upgraded at every open. See store.py for why."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine

from ferry.core.errors import UsageError
from ferry.service.auth import data_folder

SQLITE_BUSY_TIMEOUT_MS = 30_000
_PG_UPGRADE_LOCK = 0x46455252  # "FERR": serializes schema upgrades of servers starting together


# -- schema -----------------------------------------------------------------------------------------


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: SQLite keeps no zone, PostgreSQL answers in the session's zone."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the state store; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Kept in step with alembic/versions/*.py by tests/unit/test_service_store.py (autogenerate finds no diff).
metadata = sa.MetaData()

migrations = sa.Table(
    "migrations",
    metadata,
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
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False),  # the newest event's seq: one counter per migration
    sa.Column("database", sa.Text, nullable=True),  # which database of the source's store (0002)
    sa.UniqueConstraint("name", name="uq_migrations_name"),
    sa.Index("ix_migrations_state", "state"),
    sa.Index("ix_migrations_target", "target"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column(
        "migration_id",
        sa.String(32),
        sa.ForeignKey("migrations.id", name="fk_events_migration"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column(
        "migration_id",
        sa.String(32),
        sa.ForeignKey("migrations.id", name="fk_snapshots_migration"),
        primary_key=True,
    ),
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("saved_at", UtcDateTime, nullable=False),
)

targets = sa.Table(
    "targets",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)


# -- opening ----------------------------------------------------------------------------------------


def default_url() -> str:
    return f"sqlite:///{data_folder() / 'state.db'}"


def resolve_url(url: str | None) -> str:
    """A SQLAlchemy URL from what a user writes: nothing (the default file), a path, or a URL."""
    if not url:
        return default_url()
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"  # psycopg 3 is what Ferry ships with
    if scheme.startswith("sqlite") and rest in ("", "/", "/:memory:"):
        raise UsageError(
            "an in-memory SQLite state store cannot be shared by the API and the workers",
            "give a file path (or nothing, for the file in Ferry's data folder)",
        )
    return url


def _alembic_dir() -> Path:
    return Path(str(resources.files("ferry.service").joinpath("alembic")))


def _sqlite_engine(url: sa.URL, *, writer: bool) -> Engine:
    if url.database:
        # 0700: the store holds source URLs, which may carry credentials.
        Path(url.database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = sa.create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        pool_size=1 if writer else 8,
        max_overflow=0 if writer else 24,
        pool_timeout=120,
    )
    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the pysqlite driver would defer it).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes in WAL mode
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


def open_engines(url_text: str) -> tuple[Engine, Engine]:
    """(writer, reader): two engines on SQLite (see the module's docstring), one shared on PostgreSQL."""
    try:
        url = sa.make_url(url_text)
    except sa.exc.ArgumentError:
        raise UsageError(
            f"'{url_text}' is not a database URL",
            "give a file path, sqlite:///PATH or postgresql+psycopg://USER@HOST/DB",
        ) from None
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, writer=True), _sqlite_engine(url, writer=False)
    if url.get_backend_name() != "postgresql":
        raise UsageError(
            f"state store URL '{url.render_as_string(hide_password=True)}' is neither SQLite nor PostgreSQL",
            "give a file path, sqlite:///PATH or postgresql+psycopg://USER@HOST/DB",
        )
    engine = sa.create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True)
    return engine, engine


def upgrade_schema(engine: Engine) -> None:
    """`alembic upgrade head` in one transaction that other starting servers wait for."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_alembic_dir()))
    with engine.begin() as conn:  # BEGIN IMMEDIATE on SQLite: one upgrader at a time
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_UPGRADE_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
