"""Alembic environment of Ferry's state store.

The store runs `upgrade head` itself when it opens (store.upgrade_schema), passing its open connection in
`config.attributes["connection"]`: the upgrade then runs inside the store's transaction and lock. Run by
hand (`alembic -c ... upgrade head`), it connects to `sqlalchemy.url` instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from ferry.service.store import metadata, resolve_url

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    url = resolve_url(config.get_main_option("sqlalchemy.url"))
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    engine = create_engine(resolve_url(config.get_main_option("sqlalchemy.url")))
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
