"""The state store on real SQLite files: transitions, the append-only event log, batches, concurrency.

The tests are in `StoreContract`, which tests/integration/test_service_store_pg.py runs again against a
real PostgreSQL server by giving another `url` fixture.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from ferry.core.errors import UsageError
from ferry.core.migration import InvalidTransition, MigrationStatus, State
from ferry.service.contracts import MigrationRequest
from ferry.service.store import (
    ID_RE,
    BatchRejected,
    SqlStateStore,
    UnknownMigration,
    base_name,
    metadata,
    new_id,
    resolve_url,
)

ONLINE_PATH = (State.VALIDATING, State.RESTORING_FULL, State.RESTORING_LOGS, State.READY_FOR_CUTOVER)


def req(source: str = "/backups/db1", target: str = "t1", **kw: object) -> MigrationRequest:
    return MigrationRequest(source=source, target=target, **kw)  # type: ignore[arg-type]


def _append_many(url: str, migration_id: str, count: int) -> None:
    """Runs in another process: appends `count` events through its own store."""
    with SqlStateStore(url) as store:
        for i in range(count):
            store.append_event(migration_id, "step", f"step {i}", {"seconds": 0.01})


class StoreContract:
    """Every test here runs against each backend; subclasses give the `url` fixture."""

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def store(self, url: str) -> Iterator[SqlStateStore]:
        with SqlStateStore(url, targets=["t1", "t2"]) as s:
            yield s

    # -- create ----------------------------------------------------------------------------------

    def test_create_gives_queued_records_with_short_ids_and_a_created_event(
        self, store: SqlStateStore
    ) -> None:
        [rec] = store.create(
            [req("s3://bucket/pg/sales/", mode="offline", last_backup="000000010000000000000009")]
        )
        assert ID_RE.match(rec.id) and rec.name == "sales" and rec.state is State.QUEUED
        assert rec.mode == "offline" and rec.last_backup == "000000010000000000000009" and rec.attempt == 1
        assert rec.created_at.tzinfo is not None and rec.created_at.utcoffset() == UTC.utcoffset(None)
        assert store.get(rec.id) == rec
        [event] = store.events(rec.id)
        assert (event.seq, event.kind, event.data) == (1, "state", {"from": None, "to": "Queued"})

    def test_default_names_are_numbered_on_a_clash_within_and_across_batches(
        self, store: SqlStateStore
    ) -> None:
        first = store.create([req("/b/db1"), req("/other/db1/"), req("/b/db2")])
        second = store.create([req("smb://host/share/db1"), req(r"D:\backups\db1")])
        assert [r.name for r in first + second] == ["db1", "db1-2", "db2", "db1-3", "db1-4"]
        assert store.get_by_name("db1-3") == second[0]

    def test_a_taken_name_rejects_the_whole_batch(self, store: SqlStateStore) -> None:
        store.create([req(name="sales")])
        with pytest.raises(BatchRejected) as info:
            store.create([req("/b/x"), req("/b/y", name="sales")])
        assert info.value.code == "name_taken" and "sales" in info.value.message
        with pytest.raises(BatchRejected) as info:
            store.create([req("/b/x", name="twice"), req("/b/y", name="twice")])
        assert "given twice" in info.value.message
        assert [r.name for r in store.find()] == ["sales"]

    def test_an_unknown_target_rejects_the_whole_batch(self, store: SqlStateStore) -> None:
        with pytest.raises(BatchRejected) as info:
            store.create([req("/b/a", "t1"), req("/b/b", "nowhere")])
        assert info.value.code == "unknown_target" and isinstance(info.value, ValueError)
        assert info.value.details == {"unknown": ["nowhere"], "known": ["t1", "t2"]}
        assert "known targets: t1, t2" in info.value.hint
        assert store.find() == []

    @pytest.mark.parametrize(
        ("kw", "words"),
        [
            ({"source": "  "}, "empty source"),
            ({"mode": "sideways"}, "mode"),
            ({"last_backup": "x.trn"}, "last backup"),
            ({"name": "has space"}, "name"),
            ({"name": "mig-abcdefghij"}, "name"),
        ],
    )
    def test_unusable_requests_are_refused(
        self, store: SqlStateStore, kw: dict[str, str], words: str
    ) -> None:
        with pytest.raises(BatchRejected) as info:
            store.create([req("/b/ok"), req(**kw)])
        assert info.value.code == "invalid_request" and words in info.value.message
        assert info.value.details == {"index": 1} and info.value.hint
        assert store.find() == []

    def test_a_hundred_creates_in_one_call(self, store: SqlStateStore) -> None:
        # How long it takes is bench/orchestration.py's to measure: these machines are shared.
        records = store.create([req(f"/backups/db{i % 7}") for i in range(100)])
        assert len({r.id for r in records}) == 100 and len({r.name for r in records}) == 100
        assert len(store.find(state=State.QUEUED)) == 100

    # -- state -----------------------------------------------------------------------------------

    def test_set_state_moves_along_transitions_and_records_each_change(self, store: SqlStateStore) -> None:
        [rec] = store.create([req()])
        status = MigrationStatus(State.VALIDATING, "reading backups").to_json()
        moved = store.set_state(rec.id, State.VALIDATING, status=status)
        assert (
            moved.state is State.VALIDATING and moved.status == status and moved.updated_at > rec.updated_at
        )
        for s in ONLINE_PATH[1:]:
            store.set_state(rec.id, s)
        changes = [(e.seq, e.data["from"], e.data["to"]) for e in store.events(rec.id) if e.kind == "state"]
        assert changes == [
            (1, None, "Queued"),
            (2, "Queued", "Validating"),
            (3, "Validating", "RestoringFull"),
            (4, "RestoringFull", "RestoringLogs"),
            (5, "RestoringLogs", "ReadyForCutover"),
        ]

    def test_a_forbidden_move_changes_nothing(self, store: SqlStateStore) -> None:
        [rec] = store.create([req()])
        with pytest.raises(InvalidTransition) as info:
            store.set_state(rec.id, State.READY_FOR_CUTOVER, status={"phase": "x"})
        assert "Queued" in info.value.message and "Validating" in info.value.hint
        assert store.get(rec.id) == rec and len(store.events(rec.id)) == 1

    def test_staying_put_updates_status_without_an_event(self, store: SqlStateStore) -> None:
        [rec] = store.create([req()])
        store.set_state(rec.id, State.QUEUED, status={"phase": "waiting for a worker"})
        assert store.get(rec.id).status == {"phase": "waiting for a worker"}  # type: ignore[union-attr]
        assert len(store.events(rec.id)) == 1

    def test_retry_counts_attempts_and_clears_the_error_but_the_log_keeps_it(
        self, store: SqlStateStore
    ) -> None:
        [rec] = store.create([req()])
        failed = store.set_state(rec.id, State.FAILED, error="target disk full")
        assert failed.error == "target disk full"
        again = store.set_state(rec.id, State.QUEUED)
        assert (again.state, again.attempt, again.error) == (State.QUEUED, 2, None)
        assert store.events(rec.id)[1].data == {"from": "Queued", "to": "Failed", "error": "target disk full"}

    def test_set_status_keeps_the_latest_snapshot(self, store: SqlStateStore) -> None:
        [rec] = store.create([req()])
        for n in range(3):
            store.set_status(rec.id, {"pending_files": n})
        assert store.get(rec.id).status == {"pending_files": 2}  # type: ignore[union-attr]
        assert len(store.events(rec.id)) == 1  # progress is not an event

    def test_unknown_migrations_are_named(self, store: SqlStateStore) -> None:
        for call in (
            lambda: store.set_state("mig-aaaaaaaaaa", State.VALIDATING),
            lambda: store.set_status("mig-aaaaaaaaaa", {}),
            lambda: store.append_event("mig-aaaaaaaaaa", "info", "x"),
            lambda: store.save_snapshot("mig-aaaaaaaaaa", "plan", {}),
        ):
            with pytest.raises(UnknownMigration, match="mig-aaaaaaaaaa"):
                call()
        assert store.get("mig-aaaaaaaaaa") is None and store.events("mig-aaaaaaaaaa") == []

    def test_find_filters_by_state_and_target(self, store: SqlStateStore) -> None:
        _, b, _ = store.create([req("/b/a", "t1"), req("/b/b", "t2"), req("/b/c", "t2")])
        store.set_state(b.id, State.VALIDATING)
        assert [r.name for r in store.find()] == ["a", "b", "c"]
        assert [r.name for r in store.find(target="t2")] == ["b", "c"]
        assert [r.name for r in store.find(state=State.QUEUED, target="t2")] == ["c"]
        assert store.find(state=State.SUCCEEDED) == []

    # -- events ----------------------------------------------------------------------------------

    def test_events_are_ordered_and_read_after_a_seq(self, store: SqlStateStore) -> None:
        [rec] = store.create([req()])
        data = {"command": "RESTORE LOG ...", "started_at": "2024-05-01T12:00:00Z", "seconds": 1.5}
        step = store.append_event(rec.id, "step", "restored log 1", data)
        store.append_event(rec.id, "info", "rescan found 2 new log backups")
        store.set_state(rec.id, State.VALIDATING)
        assert step.seq == 2 and step.data == data
        assert [e.seq for e in store.events(rec.id)] == [1, 2, 3, 4]
        assert [e.message for e in store.events(rec.id, after_seq=2)] == [
            "rescan found 2 new log backups",
            "Queued -> Validating",
        ]

    def test_event_kinds_are_checked(self, store: SqlStateStore) -> None:
        [rec] = store.create([req()])
        with pytest.raises(ValueError, match="set_state"):
            store.append_event(rec.id, "state", "Queued -> Succeeded")
        with pytest.raises(ValueError, match="not JSON"):
            store.append_event(rec.id, "info", "x", {"when": object()})

    def test_the_database_refuses_to_change_or_delete_events(self, store: SqlStateStore, url: str) -> None:
        [rec] = store.create([req()])
        engine = sa.create_engine(resolve_url(url))
        try:
            for sql in ("UPDATE events SET message = 'rewritten'", "DELETE FROM events"):
                with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
                    conn.execute(sa.text(sql))
        finally:
            engine.dispose()
        assert store.events(rec.id)[0].message == "created in state Queued"

    # -- snapshots and targets -------------------------------------------------------------------

    def test_snapshots_keep_the_latest_of_each_kind(self, store: SqlStateStore) -> None:
        [rec] = store.create([req()])
        store.save_snapshot(rec.id, "plan", {"steps": [1]})
        store.save_snapshot(rec.id, "plan", {"steps": [1, 2]})
        store.save_snapshot(rec.id, "catalog", [{"database": "db1"}])
        assert store.snapshot(rec.id, "plan") == {"steps": [1, 2]}
        assert store.snapshot(rec.id, "catalog") == [{"database": "db1"}]
        assert store.snapshot(rec.id, "other") is None

    def test_targets_are_registered_and_updated(self, store: SqlStateStore) -> None:
        store.register_target("t3", {"host": "db-east-7"})
        store.register_target("t3", {"host": "db-east-8"})
        assert store.targets() == {"t1": {}, "t2": {}, "t3": {"host": "db-east-8"}}
        store.create([req(target="t3")])

    # -- opening and concurrency -----------------------------------------------------------------

    def test_reopening_keeps_everything_and_the_schema_matches_the_code(
        self, store: SqlStateStore, url: str
    ) -> None:
        [rec] = store.create([req()])
        with SqlStateStore(url) as again:
            assert again.get(rec.id) == rec
        engine = sa.create_engine(resolve_url(url))
        try:
            with engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), metadata)
                version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        finally:
            engine.dispose()
        assert diff == [] and version == "0002"

    def test_threads_writing_at_once_neither_fail_nor_lose_events(
        self, store: SqlStateStore, url: str
    ) -> None:
        records = store.create([req(f"/b/db{i}") for i in range(8)])
        shared = records[0].id
        other = SqlStateStore(url)  # a second store on the same database: another process's view
        errors: list[BaseException] = []

        def work(i: int) -> None:
            s = store if i % 2 else other
            mine = records[i].id
            try:
                for n in range(25):
                    s.set_status(mine, {"bytes_done": n})
                    s.append_event(mine, "step", f"step {n}")
                    s.append_event(shared, "info", f"worker {i} #{n}")
                s.set_state(mine, State.VALIDATING)
            except BaseException as exc:  # recorded: the assertion below names it
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        other.close()
        assert errors == [] and not any(t.is_alive() for t in threads)
        assert time.perf_counter() - started < 30
        seqs = [e.seq for e in store.events(shared)]
        assert seqs == list(range(1, 1 + 1 + 25 + 8 * 25 + 1))  # created, own steps, everyone's, state
        assert all(r.state is State.VALIDATING for r in store.find())

    def test_processes_appending_to_one_log_get_consecutive_seqs(
        self, store: SqlStateStore, url: str
    ) -> None:
        [rec] = store.create([req()])
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_append_many, args=(url, rec.id, 40)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        assert [e.seq for e in store.events(rec.id)] == list(range(1, 122))


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'state.db'}"

    def test_sqlite_runs_in_wal_mode(self, store: SqlStateStore, tmp_path: Path) -> None:
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        finally:
            engine.dispose()


def test_urls_from_what_users_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / "home"))
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'home' / 'state.db'}"
    assert resolve_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_url("postgresql://ferry@db/ferry") == "postgresql+psycopg://ferry@db/ferry"
    assert resolve_url("postgresql+psycopg://ferry@db/ferry") == "postgresql+psycopg://ferry@db/ferry"
    with pytest.raises(UsageError, match="in-memory"):
        resolve_url("sqlite://")
    with pytest.raises(UsageError, match="neither SQLite nor PostgreSQL"):
        SqlStateStore("mysql://u:secret@h/db")


def test_the_default_store_lives_in_the_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / "home"))
    with SqlStateStore() as store:
        store.register_target("t1")
    assert (tmp_path / "home" / "state.db").is_file()


def test_an_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(Exception, match="cannot open the state store") as info:
        SqlStateStore("postgresql+psycopg://nobody:secret@127.0.0.1:1/none?connect_timeout=2")
    assert "secret" not in str(info.value) and "running" in info.value.hint  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("/backups/db1", "db1"),
        ("/backups/db1/", "db1"),
        ("s3://bucket/pg/sales/", "sales"),
        ("az://account/container", "container"),
        ("smb://host/share/My Db", "My-Db"),
        (r"\\host\share\db7", "db7"),
        ("s3://bucket/x?versionId=3", "x"),
        ("/", "migration"),
        ("/b/mig-abcdefghij", "m-mig-abcdefghij"),
    ],
)
def test_default_names_come_from_the_last_folder(source: str, name: str) -> None:
    assert base_name(source) == name


def test_ids_are_short_url_safe_and_distinct() -> None:
    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(ID_RE.match(i) for i in ids)
