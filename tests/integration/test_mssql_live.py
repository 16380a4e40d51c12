"""The same SQL Server migration against a real SQL Server, when one is configured:

    FERRY_TEST_MSSQL_URL=mssql://USER@HOST[:PORT][/INSTANCE]   a login with dbcreator
    FERRY_TEST_MSSQL_PASSWORD=...                              its password
    FERRY_TEST_MSSQL_BACKUPS=PATH                              where that server reads the corpus's
                                                               RestoreTimeClean folder (a share or a copy)

Without them every test here skips and says why. What this proves that the model cannot: the facts and
position queries against the real system views, real RESTORE progress messages, orphaned users and
DBCC CHECKDB on a real database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from ferry.engines.base import MigrationJob, ReplaySettings, TargetSpec
from ferry.engines.sqlserver.connection import Connection, TargetUrl
from ferry.engines.sqlserver.target import Target
from ferry.engines.sqlserver.tsql import quote_ident
from ferry.pipeline.migrate import Migration
from tests.integration.mssqlrig import Recorder, corpus

URL = os.environ.get("FERRY_TEST_MSSQL_URL")
PASSWORD = os.environ.get("FERRY_TEST_MSSQL_PASSWORD")
BACKUPS = os.environ.get("FERRY_TEST_MSSQL_BACKUPS")

pytestmark = pytest.mark.skipif(
    not (URL and PASSWORD and BACKUPS),
    reason="no live SQL Server configured: set FERRY_TEST_MSSQL_URL, FERRY_TEST_MSSQL_PASSWORD and "
    "FERRY_TEST_MSSQL_BACKUPS (where that server reads RestoreTimeClean) to run these",
)


@pytest.fixture
def target() -> Iterator[Target]:
    assert URL and PASSWORD
    with Target(Connection.open(TargetUrl.parse(URL), PASSWORD)) as t:
        yield t


def test_facts_and_position_queries_run_on_a_real_server(target: Target) -> None:
    facts = target.facts(["C:\\nonexistent\\x.mdf", "/nonexistent/x.mdf"])
    assert facts.major >= 11 and facts.databases and facts.files
    assert facts.database("master") is not None
    assert not target.position("ferry_no_such_database").exists


def test_offline_migration_with_the_lsn_proof(
    target: Target, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert URL and PASSWORD and BACKUPS
    monkeypatch.setenv("FERRY_MSSQL_PASSWORD", PASSWORD)
    monkeypatch.setenv("FERRY_HOME", str(tmp_path))
    source = (corpus() / "RestoreTimeClean").as_posix()
    name = f"ferry_live_{uuid.uuid4().hex[:8]}"
    job = MigrationJob(
        id=name,
        source=source,
        target=TargetSpec("live", "sqlserver", URL),
        online=False,
        replay=ReplaySettings(blocked_after=30.0),
        target_database=name,
        options={"backup_path_as": [f"{source}={BACKUPS}"], "checkdb": True},
    )
    try:
        outcome = Migration(job, Recorder(), lambda: None).run()
        assert outcome.state == "Succeeded"
        result = outcome.result
        assert result["lsn_proof"] and result["restored_last_lsn"] == "25000000022000001"
        assert result["checkdb"] == "clean" and result["orphaned_users"] is not None
        assert result["compatibility_level"] is not None and result["owner"]
    finally:
        target.conn.execute(f"IF DB_ID(N'{name}') IS NOT NULL DROP DATABASE {quote_ident(name)}")
