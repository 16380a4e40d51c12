"""Every preflight check of a SQL Server target, against the restore model: each one's finding, and that a
blocked migration leaves the target as it was."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from ferry.core.findings import MigrationBlocked
from ferry.core.migration import State
from tests.integration.mssqlrig import DB, RTC_FULL, Rig, later, make_rig
from tests.mssql_model.testing import PASSWORDS


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    yield from make_rig(tmp_path, monkeypatch)


def blocked(r: Rig, **options: object) -> dict[str, str]:
    """Run the migration; it must be blocked. Returns its findings' codes and messages."""
    with pytest.raises(MigrationBlocked) as info:
        r.run(r.job(**options))  # type: ignore[arg-type]
    assert info.value.hint and not info.value.retryable
    return {f.code: f.message for f in info.value.findings}


def _untouched(r: Rig) -> None:
    assert r.model.history() == [] and r.model.database(DB) is None


def test_a_sql_server_2008_r2_target_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for r in make_rig(tmp_path, monkeypatch, version="10.50.6000.34"):
        found = blocked(r)
        assert "target-unsupported-version" in found and "2008" in found["target-unsupported-version"]
        _untouched(r)


def test_a_backup_newer_than_the_target_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for r in make_rig(tmp_path, monkeypatch, files=(), version="13.0.1601.5"):
        r.add("full_backup.bak", folder="more/sql2019")
        found = blocked(r)
        assert "target-version-too-old" in found and "904" in found["target-version-too-old"]
        _untouched(r)


def test_urls_on_sql_server_2014_need_a_key_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files mapped to URLs whose blob type Ferry cannot ask: a warning, and the key credential that 2014
    names in every restore must exist (block blobs from a store: test_mssql_devices.py)."""
    for r in make_rig(tmp_path, monkeypatch, files=RTC_FULL, version="12.0.2000.8"):
        base = "http://127.0.0.1:9/devstoreaccount1/backups"
        found = blocked(r, backup_path_as=[f"{r.store}={base}"], credential="key")
        assert "blob-types-unknown" in found and "page blobs" in found["blob-types-unknown"]
        assert "url-credential-missing" in found and "[key]" in found["url-credential-missing"]
        _untouched(r)


def test_an_existing_database_needs_replace_and_yes(rig: Rig) -> None:
    rig.restore_online()
    before = len(rig.model.history())
    assert "already exists" in blocked(rig)["database-exists"]
    assert "--yes" in blocked(rig, replace=True)["database-exists"]
    assert len(rig.model.history()) == before


def test_replace_never_happens_while_the_database_has_sessions_unless_forced(rig: Rig) -> None:
    rig.restore_online()
    with rig.connect(database=DB):
        found = blocked(rig, replace=True, yes=True)
        assert "database-in-use" in found and "1 open session" in found["database-in-use"]
        outcome, _ = rig.run(rig.job(replace=True, yes=True, force=True))
    assert outcome.state == "Succeeded" and outcome.result["lsn_proof"]
    assert rig.model.db_state(DB) == "ONLINE"


def test_existing_files_are_relocated_with_move(rig: Rig) -> None:
    taken = rig.state / "fs/var/opt/mssql/data/RestoreTimeClean.mdf"
    taken.write_text("someone else's file\n")
    outcome, _ = rig.run(rig.job())
    moved = outcome.result["moves"]["RestoreTimeClean"]
    assert moved == "/var/opt/mssql/data/RestoreTimeClean_2.mdf"
    assert taken.read_text() == "someone else's file\n"
    db = rig.model.database(DB)
    assert db is not None and moved in {f.physical_name for f in db.files}


def test_relocation_is_reported_before_the_restore(rig: Rig) -> None:
    (rig.state / "fs/var/opt/mssql/data/RestoreTimeClean_log.LDF").write_text("x")
    from ferry.engines.registry import migrator
    from ferry.pipeline.migrate import read_source

    job = rig.job(data_dir="/var/opt/mssql/data/")
    _, report = migrator("sqlserver").prepare(job, read_source(job.source, "sqlserver"), _Ctx())
    codes = {f["code"]: f["message"] for f in report.data["findings"]}
    assert "RestoreTimeClean_log_2.LDF" in codes["files-relocated"]
    assert "file-moves" in codes
    _untouched(rig)


class _Ctx:
    def report(self, status: object) -> None: ...
    def check(self) -> None: ...
    def note(self, message: str) -> None: ...
    def rescan(self) -> object:
        raise AssertionError("prepare does not rescan")


def test_a_volume_without_room_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for r in make_rig(tmp_path, monkeypatch, free_bytes={"/var/opt/mssql/data": 1_000_000}):
        found = blocked(r)
        assert "free-space" in found and "/var/opt/mssql/data" in found["free-space"]
        _untouched(r)


def test_single_user_mode_is_waited_out(rig: Rig) -> None:
    rig.restore_online()
    with rig.connect() as conn:
        conn.cursor().execute(f"ALTER DATABASE [{DB}] SET SINGLE_USER")

    def clear() -> None:
        with rig.connect() as conn:
            conn.cursor().execute(f"ALTER DATABASE [{DB}] SET MULTI_USER")

    later(1.5, clear)
    started = time.monotonic()
    outcome, rec = rig.run(rig.job(replace=True, yes=True))
    assert time.monotonic() - started > 1.4
    waits = [s for s in rec.statuses if s.blocked_reason]
    assert waits and "SINGLE_USER" in (waits[0].blocked_reason or "") and waits[0].state is State.VALIDATING
    assert outcome.state == "Succeeded"


def test_a_location_the_target_cannot_read_is_refused(rig: Rig) -> None:
    found = blocked(rig, backup_path_as=[])  # the model does not see this machine's folder
    assert "backup-unreadable" in found and "Operating system error" in found["backup-unreadable"]
    _untouched(rig)


def test_a_login_without_rights_is_refused(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_MSSQL_PASSWORD", PASSWORDS["reader"])
    found = blocked(rig, url=f"mssql://reader@127.0.0.1:{rig.server.port}")  # type: ignore[arg-type]
    assert "missing-rights" in found and "reader" in found["missing-rights"]
    _untouched(rig)


def test_a_port_answered_by_another_instance_is_refused(rig: Rig) -> None:
    found = blocked(rig, url=f"mssql://sa@127.0.0.1:{rig.server.port}/SALES")  # type: ignore[arg-type]
    assert "target-instance-mismatch" in found


# -- URLs: a credential Ferry creates from a SAS token -------------------------------------------------

SAS = "sv=2022-11-02&sp=rl&sig=model"


class _Blobs(http.server.BaseHTTPRequestHandler):
    root: Path

    def _file(self) -> Path | None:
        parts = urlsplit(self.path)
        if parts.query != SAS:
            return None
        path = self.root / unquote(parts.path).removeprefix("/devstoreaccount1/backups/")
        return path if path.is_file() else None

    def do_HEAD(self) -> None:
        path = self._file()
        self.send_response(200 if path else 403)
        if path:
            self.send_header("Content-Length", str(path.stat().st_size))
            # The Blob service names the blob type on every HEAD, and the model reads block blobs only
            # through a SAS (https://learn.microsoft.com/rest/api/storageservices/get-blob-properties).
            self.send_header("x-ms-blob-type", "BlockBlob")
        self.end_headers()

    def do_GET(self) -> None:
        path = self._file()
        if path is None:
            self.send_response(403)
            self.end_headers()
            return
        first, last = self.headers["Range"].removeprefix("bytes=").split("-")
        with path.open("rb") as fh:
            fh.seek(int(first))
            chunk = fh.read(int(last) - int(first) + 1)
        self.send_response(206)
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        self.wfile.write(chunk)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def blobs(rig: Rig) -> Iterator[str]:
    _Blobs.root = rig.store
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Blobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/devstoreaccount1/backups"
    finally:
        server.shutdown()


def test_a_url_without_a_credential_is_refused(rig: Rig, blobs: str) -> None:
    found = blocked(rig, backup_path_as=[f"{rig.store}={blobs}"])
    assert "url-credential-missing" in found and blobs in found["url-credential-missing"]
    assert rig.model.state().credentials == []


def test_ferry_creates_the_sas_credential_and_restores_from_urls(rig: Rig, blobs: str) -> None:
    outcome, _ = rig.run(rig.job(backup_path_as=[f"{rig.store}={blobs}"], sas_token="?" + SAS))
    assert outcome.state == "Succeeded" and outcome.result["lsn_proof"]
    creds = rig.model.state().credentials
    assert [c.name for c in creds] == [blobs] and creds[0].secret == SAS
    devices = {r["physical_device_name"] for r in rig.model.state().backupmediafamily}
    assert f"{blobs}/RestoreTimeClean.bak" in devices
