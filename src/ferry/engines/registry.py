"""The engines Ferry knows, in the order their sniffers are asked about a file."""

from __future__ import annotations

from ferry.engines.base import Engine
from ferry.engines.postgres.engine import PostgresEngine
from ferry.engines.sqlserver.engine import SqlServerEngine


def all_engines() -> list[Engine]:
    return [SqlServerEngine(), PostgresEngine()]
