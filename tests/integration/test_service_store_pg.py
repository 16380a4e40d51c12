"""The state store's tests (tests/unit/test_service_store.py) against a real PostgreSQL server.

One server for the module (run as the OS user `postgres` under a 0755 folder); a fresh database per test.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import psycopg
import pytest

from ferry.engines.postgres.cluster import Cluster, free_port
from ferry.service.contracts import Event
from ferry.service.store import SqlStateStore
from tests.integration.pgsource import TEST_SETTINGS, make_root, require_postgres
from tests.unit.test_service_store import StoreContract, req

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    binaries, user = require_postgres()
    with make_root("ferry-state-pg-") as root:
        c = Cluster(root / "pg", free_port(), binaries, user)
        c.initdb()
        with (c.datadir / "postgresql.conf").open("a") as conf:
            for key, value in {**TEST_SETTINGS, "max_connections": "200"}.items():
                conf.write(f"{key} = {value}\n")
        c.start()
        try:
            yield c
        finally:
            c.stop(mode="immediate")


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def url(self, cluster: Cluster) -> str:
        name = f"ferry_state_{next(_numbers)}"
        cluster.query(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/{name}"

    def test_an_append_waits_only_for_its_own_migration(
        self, store: SqlStateStore, url: str, cluster: Cluster
    ) -> None:
        """While one migration's row is locked (a long set_state, say), another's log still moves."""
        a, b = store.create([req("/b/a"), req("/b/b")])
        appended: list[Event] = []
        worker = threading.Thread(
            target=lambda: appended.append(store.append_event(b.id, "info", "not held up"))
        )
        with psycopg.connect(cluster.dsn(url.rsplit("/", 1)[1])) as locker:
            locker.execute("SELECT 1 FROM migrations WHERE id = %s FOR UPDATE", (a.id,))
            worker.start()
            worker.join(10)  # a wider lock would hold it until the rollback below
            finished = not worker.is_alive()
            locker.rollback()
        worker.join(10)
        assert finished and [e.seq for e in appended] == [2]
