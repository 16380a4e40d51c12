"""Helpers for tests that drive the SQL Server restore model with the real pymssql client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymssql
import pytest

from tests.conftest import corpus_root
from tests.mssql_model.server import ModelServer

LOGINS = ["sa:Model-Passw0rd:sysadmin", "creator:Creat0r-pw:dbcreator", "reader:Read3r-pw"]
PASSWORDS = {spec.split(":")[0]: spec.split(":")[1] for spec in LOGINS}
DATA = "/var/opt/mssql/data"
RTC = "/backups/RestoreTimeClean"
STOPAT = "/backups/sql2008-backups/StopAt"


def model_root(state: Path) -> Path:
    """STATE/fs with `backups` pointing at the corpus (read through the model's file system)."""
    corpus = corpus_root()
    if corpus is None:
        pytest.skip("SQL Server backup corpus not found: set FERRY_SQLSERVER_CORPUS")
    root = state / "fs"
    root.mkdir(parents=True, exist_ok=True)
    link = root / "backups"
    if not link.exists():
        os.symlink(corpus, link)
    return root


def start_model(state: Path, **options: Any) -> ModelServer:
    model_root(state)
    settings: dict[str, Any] = {"logins": LOGINS, "restore_mbps": 10_000.0, "min_restore_seconds": 0.01}
    settings.update(options)
    return ModelServer(state, **settings).start()


@pytest.fixture
def model(tmp_path: Path) -> Iterator[ModelServer]:
    server = start_model(tmp_path / "state")
    try:
        yield server
    finally:
        server.stop()


def connect(server: ModelServer | int, user: str = "sa", **options: Any) -> Any:
    port = server if isinstance(server, int) else server.port
    settings: dict[str, Any] = {"autocommit": True, "login_timeout": 10, "timeout": 60}
    settings.update(options)
    opener: Any = pymssql.connect  # its overloads want literal keyword types
    return opener(server="127.0.0.1", port=port, user=user, password=PASSWORDS.get(user, "?"), **settings)


def moves(logical_data: str, logical_log: str, stem: str) -> str:
    return (
        f"MOVE N'{logical_data}' TO N'{DATA}/{stem}.mdf', MOVE N'{logical_log}' TO N'{DATA}/{stem}_log.ldf'"
    )


def error_number(exc: BaseException) -> int:
    """pymssql puts the server's message number first in the exception's arguments."""
    first = exc.args[0]
    return int(first[0] if isinstance(first, tuple) else first)


def run(cursor: Any, sql: str) -> list[tuple[Any, ...]]:
    cursor.execute(sql)
    try:
        return list(cursor.fetchall())
    except pymssql.OperationalError:
        return []


def fails(cursor: Any, sql: str) -> int:
    """The error number a statement fails with."""
    with pytest.raises(pymssql.DatabaseError) as info:
        cursor.execute(sql)
    return error_number(info.value)
