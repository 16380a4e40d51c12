"""The SQL Server path against a real SQL Server, when one is configured. Everything here skips, saying
why, without these:

    FERRY_TEST_MSSQL_URL=mssql://USER@HOST[:PORT][/INSTANCE]   a sysadmin login (the tests make and drop
                                                               databases and credentials)
    FERRY_TEST_MSSQL_PASSWORD=...                              its password

and, for the tests that need them:

    FERRY_TEST_MSSQL_BACKUPS=PATH           where that server reads the corpus's RestoreTimeClean folder
    FERRY_TEST_MSSQL_SHARE=LOCAL=SERVER     a folder this machine sees at LOCAL and the server at SERVER:
                                            the tests take fresh backups there with BACKUP DATABASE / LOG
    FERRY_TEST_AZURE_ENDPOINT=https://HOST:PORT/ACCOUNT   a blob endpoint (Azurite over HTTPS) that both
    FERRY_TEST_AZURE_KEY=...                              this machine and the server reach by that name,
                                                          with a certificate the server trusts

`.github/workflows/mssql-live.yml` runs this module against SQL Server 2019 and 2022 on Linux with
Azurite over HTTPS. What it proves that the restore model cannot: the facts and position queries on the
real system views, real RESTORE progress and errors, the SAS credential as the real server reads it,
Ferry's reader on backups the server has just written, orphaned users and DBCC CHECKDB.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

URL = os.environ.get("FERRY_TEST_MSSQL_URL", "")
PASSWORD = os.environ.get("FERRY_TEST_MSSQL_PASSWORD", "")
BACKUPS = os.environ.get("FERRY_TEST_MSSQL_BACKUPS", "")
SHARE = os.environ.get("FERRY_TEST_MSSQL_SHARE", "")
AZURE_ENDPOINT = os.environ.get("FERRY_TEST_AZURE_ENDPOINT", "").rstrip("/")
AZURE_KEY = os.environ.get("FERRY_TEST_AZURE_KEY", "")
RTC_LAST_LSN = "25000000022000001"  # LastLSN of RestoreTimeClean2_3.trn

pytestmark = pytest.mark.skipif(
    not (URL and PASSWORD),
    reason="no live SQL Server configured: set FERRY_TEST_MSSQL_URL and FERRY_TEST_MSSQL_PASSWORD "
    "(and FERRY_TEST_MSSQL_SHARE, FERRY_TEST_MSSQL_BACKUPS, FERRY_TEST_AZURE_ENDPOINT for more)",
)


def _need(value: str, name: str) -> None:
    if not value:
        pytest.skip(f"set {name} to run this against the live SQL Server")


class Server:
    """The live server through pymssql directly: the tests' own view, apart from Ferry's."""

    def __init__(self) -> None:
        import pymssql

        rest = URL.removeprefix("mssql://")
        user, _, where = rest.partition("@")
        hostport = where.split("/", 1)[0].split("?", 1)[0]
        host, _, port = hostport.rpartition(":") if hostport.count(":") == 1 else (hostport, "", "")
        opener: Any = pymssql.connect
        self.conn = opener(server=host or hostport, port=port or "1433", user=user, password=PASSWORD,
                           autocommit=True, login_timeout=15, timeout=600)  # fmt: skip

    def run(self, sql: str) -> list[tuple[Any, ...]]:
        import pymssql

        cur = self.conn.cursor()
        cur.execute(sql)
        rows: list[tuple[Any, ...]] = []
        while True:
            with contextlib.suppress(pymssql.OperationalError):  # a batch without a result set
                rows += cur.fetchall()
            if not cur.nextset():
                return rows

    def one(self, sql: str) -> Any:
        rows = self.run(sql)
        return rows[0][0] if rows else None

    def drop(self, *names: str) -> None:
        for name in names:
            self.run(f"IF DB_ID(N'{name}') IS NOT NULL BEGIN ALTER DATABASE [{name}] SET SINGLE_USER WITH "
                     f"ROLLBACK IMMEDIATE; DROP DATABASE [{name}] END")  # fmt: skip


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.conn.close()


def _env(home: Path, **more: str) -> dict[str, str]:
    return {**os.environ, "FERRY_MSSQL_PASSWORD": PASSWORD, "FERRY_HOME": str(home), **more}


def _ferry(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)  # fmt: skip


def _result(out: str) -> dict[str, Any]:
    return dict(json.loads(out[out.index("{\n") :]))


def test_facts_and_position_queries_run_on_a_real_server() -> None:
    from ferry.engines.sqlserver.connection import Connection, TargetUrl
    from ferry.engines.sqlserver.target import Target

    with Target(Connection.open(TargetUrl.parse(URL), PASSWORD)) as target:
        facts = target.facts(["C:\\nonexistent\\x.mdf", "/nonexistent/x.mdf"])
        assert facts.major >= 11 and facts.databases and facts.files
        assert facts.database("master") is not None
        assert not target.position("ferry_no_such_database").exists


def test_the_corpus_offline_with_the_lsn_proof_and_checkdb(server: Server, tmp_path: Path) -> None:
    from tests.integration.mssqlrig import corpus

    _need(BACKUPS, "FERRY_TEST_MSSQL_BACKUPS")
    source = (corpus() / "RestoreTimeClean").as_posix()
    name = f"ferry_live_{uuid.uuid4().hex[:8]}"
    try:
        done = _ferry("migrate", source, "--database", "RestoreTimeClean", "--target-database", name,
                      "--to", URL, "--backup-path-as", f"{source}={BACKUPS}", "--offline", "--checkdb",
                      "--json", env=_env(tmp_path))  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        result = _result(done.stdout)
        assert result["lsn_proof"] and result["restored_last_lsn"] == RTC_LAST_LSN
        assert result["checkdb"] == "clean" and result["orphaned_users"] is not None
        assert server.one(f"SELECT state_desc FROM sys.databases WHERE name = N'{name}'") == "ONLINE"
    finally:
        server.drop(name)


class Fresh:
    """A database on the live server with backups it has just taken into the shared folder: a full
    backup, then log backups, each after more rows. `rows` is the row count as of the last backup."""

    def __init__(self, server: Server, local: Path, remote: str) -> None:
        self.server = server
        self.name = f"ferry_src_{uuid.uuid4().hex[:8]}"
        self.local = local / self.name
        self.local.mkdir(parents=True)
        self.remote = f"{remote.rstrip('/')}/{self.name}"
        self.rows = 0
        server.run(f"CREATE DATABASE [{self.name}]; ALTER DATABASE [{self.name}] SET RECOVERY FULL")
        server.run(f"CREATE TABLE [{self.name}].dbo.t (id int IDENTITY PRIMARY KEY, v nvarchar(100))")
        self.insert(500)
        self.backup("DATABASE", "full.bak")

    def insert(self, n: int) -> None:
        self.server.run(f"INSERT INTO [{self.name}].dbo.t (v) SELECT TOP ({n}) N'ferry' FROM sys.all_objects")
        self.rows += n

    def backup(self, what: str, file: str, *more: str) -> Path:
        options = ", ".join(("CHECKSUM", "INIT", *more))
        self.server.run(f"BACKUP {what} [{self.name}] TO DISK = N'{self.remote}/{file}' WITH {options}")
        return self.local / file

    def log(self, file: str, *more: str) -> Path:
        self.insert(100)
        return self.backup("LOG", file, *more)


@pytest.fixture
def fresh(server: Server) -> Iterator[Fresh]:
    _need(SHARE, "FERRY_TEST_MSSQL_SHARE")
    local, _, remote = SHARE.partition("=")
    db = Fresh(server, Path(local), remote)
    try:
        yield db
    finally:
        server.drop(db.name)


def test_fresh_backups_online_with_a_tail_log_and_cutover(
    server: Server, fresh: Fresh, tmp_path: Path
) -> None:
    """Backups the server has just written, read by Ferry's reader; online until the tail-log backup."""
    fresh.log("log1.trn")
    fresh.log("log2.trn")
    target = f"ferry_dst_{uuid.uuid4().hex[:8]}"
    env = _env(tmp_path)
    log = tmp_path / "migrate.log"
    local, _, remote = SHARE.partition("=")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ferry", "migrate", str(fresh.local), "--database",
                                 fresh.name, "--target-database", target, "--to", URL, "--backup-path-as",
                                 f"{local}={remote}", "--json"], stdout=out, stderr=subprocess.STDOUT,
                                text=True, env=env, cwd=REPO)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "ReadyForCutover" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        fresh.log("tail.trn", "NORECOVERY")  # the tail-log backup leaves the source RESTORING
        asked = _ferry("cutover", URL, "--database", target, "--last-backup", "tail.trn", env=env)
        assert asked.returncode == 0, asked.stdout + asked.stderr
        assert proc.wait(timeout=300) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        result = _result(log.read_text())
        assert result["lsn_proof"] and result["last_backup"] == "tail.trn"
        assert server.one(f"SELECT COUNT(*) FROM [{target}].dbo.t") == fresh.rows
    finally:
        server.drop(target)


def test_a_chain_with_a_gap_is_refused_before_the_target_is_touched(
    server: Server, fresh: Fresh, tmp_path: Path
) -> None:
    fresh.log("log1.trn")
    fresh.log("log2.trn").unlink()  # the middle log is lost
    fresh.log("log3.trn")
    target = f"ferry_dst_{uuid.uuid4().hex[:8]}"
    local, _, remote = SHARE.partition("=")
    done = _ferry("migrate", str(fresh.local), "--database", fresh.name, "--target-database", target, "--to",
                  URL, "--backup-path-as", f"{local}={remote}", "--offline", env=_env(tmp_path))  # fmt: skip
    text = done.stdout + done.stderr
    assert done.returncode != 0 and "[chain-gap]" in text and "log1.trn" in text, text
    assert server.one(f"SELECT DB_ID(N'{target}')") is None, "refused, yet the target was touched"


def test_from_azure_blob_through_the_sas_credential(server: Server, fresh: Fresh, tmp_path: Path) -> None:
    """az:// onto the real server: Ferry mints a SAS from the account key, creates the credential named
    after the container, and the server reads the blobs itself."""
    _need(AZURE_ENDPOINT, "FERRY_TEST_AZURE_ENDPOINT")
    from azure.storage.blob import BlobServiceClient

    fresh.log("log1.trn")
    account = AZURE_ENDPOINT.rsplit("/", 1)[-1]
    container = f"t{uuid.uuid4().hex[:16]}"
    svc = BlobServiceClient(AZURE_ENDPOINT, credential={"account_name": account, "account_key": AZURE_KEY})
    svc.create_container(container)
    for f in sorted(fresh.local.iterdir()):
        svc.get_blob_client(container, f"{fresh.name}/{f.name}").upload_blob(f.read_bytes())
    target = f"ferry_dst_{uuid.uuid4().hex[:8]}"
    credential = f"{AZURE_ENDPOINT}/{container}"
    try:
        env = _env(tmp_path, FERRY_AZURE_BLOB_ENDPOINT=AZURE_ENDPOINT, AZURE_STORAGE_KEY=AZURE_KEY)
        done = _ferry("migrate", f"az://{account}/{container}/{fresh.name}", "--database", fresh.name,
                      "--target-database", target, "--to", URL, "--offline", "--json", env=env)  # fmt: skip
        text = done.stdout + done.stderr
        assert done.returncode == 0, text
        assert AZURE_KEY not in text and "sig=" not in text
        assert _result(done.stdout)["lsn_proof"]
        assert server.one(f"SELECT COUNT(*) FROM [{target}].dbo.t") == fresh.rows
        assert server.one(
            f"SELECT credential_identity FROM sys.credentials WHERE name = N'{credential}'"
        ) == ("SHARED ACCESS SIGNATURE")
    finally:
        server.drop(target)
        server.run(f"IF EXISTS (SELECT 1 FROM sys.credentials WHERE name = N'{credential}') "
                   f"DROP CREDENTIAL [{credential}]")  # fmt: skip
        svc.delete_container(container)
        svc.close()
