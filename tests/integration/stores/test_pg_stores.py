"""PostgreSQL migrations from the stores DBAs keep backups in: a real source archives its WAL with
`ferry wal-push` straight into Azure Blob (Azurite), an SMB share (Samba) and S3 (moto), its base backup
is uploaded beside it, and an online migration reads both from the store, follows new WAL as it arrives
and cuts over with every row on the target.

Credentials come from the environment (the fixtures set them), which the source server, its
archive_command, the target server and its restore_command all inherit: nothing secret is in a URL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.core.migration import MigrationStatus, State
from ferry.engines.postgres.archive import ferry_command
from ferry.engines.postgres.cutover import CutoverRequest
from ferry.engines.postgres.migration import MigrationSpec
from ferry.engines.postgres.target import PostgresTarget
from ferry.pipeline.migrate import Migration
from ferry.stores.base import WritableStore
from ferry.stores.registry import open_store
from tests.integration.pgsource import PgSource, make_root, require_postgres, start_source
from tests.integration.stores.conftest import new_bucket, new_container, new_smb_folder
from tests.integration.stores.servers import Azurite, Moto, Samba


@pytest.fixture()
def root() -> Iterator[Path]:
    require_postgres()
    with make_root("ferry-pg-store-") as folder:
        yield folder


class _Pushed(PgSource):
    """A source whose archive is a remote store: "archived" is asked of the store, not of a folder."""

    location: str = ""

    def wait_archived(self, name: str, timeout: float = 60) -> None:
        store = open_store(self.location)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(o.key.endswith(name) for o in store.iter_objects("wal")):
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} was not archived into {store.url} within {timeout} s")


def _source(root: Path, location: str) -> _Pushed:
    command = " ".join([*ferry_command(), "wal-push", "%p", f"'{location}'"])
    src = start_source(root / "src", root / "local", archive_command=command)
    pushed = _Pushed(src.cluster, src.store, src.archive, src.backups)
    pushed.location = location
    pushed.write(4000)
    backup = pushed.base_backup("base", compress="lz4", wal_method="none")
    store = open_store(location)
    assert isinstance(store, WritableStore)
    for path in sorted(backup.iterdir()):
        with path.open("rb") as f:
            store.put_new(f"base/{path.name}", f)
    pushed.write(4000)
    pushed.switch()
    return pushed


def _count(connectable: object, table: str = "ferry_t") -> int:
    with connectable.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _migrate_online(root: Path, src: _Pushed) -> None:
    ready: list[float] = []
    final: list[str] = []

    def report(status: MigrationStatus) -> None:
        if status.state is State.READY_FOR_CUTOVER and not ready:
            ready.append(time.monotonic())

    def cutover() -> CutoverRequest | None:
        if not ready:
            return None
        if not final:  # the source goes on after the target caught up: new WAL through the store
            src.write(3000)
            final.append(src.switch_lsn())
            return None
        return CutoverRequest(time.time(), final_lsn=final[0])

    try:
        spec = MigrationSpec(src.location, root / "target", blocked_after=30)
        result = Migration(spec, report, cutover).run()
        assert result.state == "Succeeded" and result.downtime_seconds is not None
        target = PostgresTarget.open(root / "target")
        assert _count(target) == _count(src.cluster) == 11000
        target.stop()
    finally:
        src.stop()


def test_online_migration_from_azure_blob(root: Path, azure_env: Azurite) -> None:
    _, container = new_container(azure_env)
    _migrate_online(root, _source(root, f"az://devstoreaccount1/{container}/pg1"))


def test_online_migration_from_an_smb_share(root: Path, smb_env: Samba) -> None:
    _migrate_online(root, _source(root, smb_env.url(new_smb_folder(smb_env))))


def test_online_migration_from_s3(root: Path, s3_env: Moto) -> None:
    _migrate_online(root, _source(root, f"s3://{new_bucket(s3_env)}/pg1"))
