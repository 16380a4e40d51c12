"""Crashes of the service: `ferry serve` killed with -9 during a base restore and during replay, and an
agent killed with -9 during a base restore and during replay (the latter with the many-hosts layout: a
separate agent process and a PostgreSQL state store). Temporal keeps the workflows; each step resumes from
the target's own state, so the migrations finish with every row, and no step completes twice."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.engines.postgres.archive import ferry_command
from ferry.engines.postgres.target import PostgresTarget
from tests.integration.pgsource import PgSource, RowWriter, make_root, require_postgres
from tests.integration.test_service_lifecycle import (
    ROWS,
    Served,
    count,
    make_source,
    start_serve,
    stop_serve,
    stop_targets,
    switch,
    token_from,
    wait_line,
)

httpx = pytest.importorskip("httpx")


@pytest.fixture()
def root() -> Iterator[Path]:
    require_postgres()
    with make_root("ferry-crash-") as folder:
        yield folder


def _client(port: int, token: str) -> object:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def start_agent(
    log: Path, targets: Path, data: Path, tport: int, store: str, *extra: str
) -> subprocess.Popen[bytes]:
    """`ferry agent` of target "remote" in its own process, once it serves its queues: it reaches the
    embedded Temporal of `ferry serve --data DATA` with that folder's client certificate and codec key."""
    with open(log, "wb") as f:
        args = ["agent", "--target", "remote", "--root", str(targets), "--temporal", f"127.0.0.1:{tport}",
                "--temporal-tls-ca", str(data / "tls" / "ca.pem"),
                "--temporal-tls-cert", str(data / "tls" / "client.pem"),
                "--temporal-tls-key", str(data / "tls" / "client.key"),
                "--temporal-tls-server-name", "localhost",
                "--codec-key", str(data / "codec.key")]  # fmt: skip
        proc = subprocess.Popen(
            [*ferry_command(), *args, "--store", store, *extra],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    wait_line(log, "agent of target remote", proc)
    return proc


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def _replay_resumed(served: Served, mid: str, killed_at: float) -> None:
    """Until the replay step runs again after the kill, and the target has caught up."""
    deadline = time.monotonic() + 90
    while not any("replay resumed" in e["message"] for e in served.events(mid)):
        assert time.monotonic() < deadline, "the replay step was not retried after the kill"
        time.sleep(0.3)
    served.wait([mid], {"ReadyForCutover"}, timeout=120)
    print(f"replay resumed {time.monotonic() - killed_at:.1f} s after the kill")


def _cut_over_and_check(served: Served, mid: str, src: PgSource, writer: RowWriter, folder: Path) -> None:
    """Stop the writes, cut over at the source's last LSN: every committed row is on the target, and the
    base backup was restored once and the cutover ran once."""
    writer.stop()
    final = switch(src)
    r = served.api.post("/api/v1/migrations/cutover", json={"ids": [mid], "final_lsn": {mid: final}})
    assert r.status_code == 202, r.text
    (done,) = served.wait([mid], {"Succeeded"}, timeout=120)
    target = PostgresTarget.open(folder)
    assert writer.committed > 100
    assert count(target, "orders") == writer.committed == count(src.cluster, "orders")
    assert count(target) == ROWS
    assert len(served.steps(mid, "restore_base")) == 1
    assert len(served.steps(mid, "cutover")) == 1
    assert done["status"]["result"]["downtime_seconds"] < 60


def test_serve_killed_during_replay_resumes_and_loses_no_row(root: Path) -> None:
    data = root / "data"
    src = make_source(root / "s1")
    writer = RowWriter(src, pause=0.002)  # one committed row at a time, through it all
    proc, port, tport, out = start_serve(data, "--target", f"local={data / 'targets'}:2")
    api = None
    try:
        token = token_from(out.read_text())
        api = _client(port, token)
        served = Served(data, port, tport, token, proc, out, api)
        (record,) = served.create([{"source": str(src.store), "target": "local", "name": "db1"}])
        mid = record["id"]
        writer.start()
        served.wait([mid], {"ReadyForCutover", "RestoringLogs"}, timeout=120)
        switch(src)
        time.sleep(2)  # replaying, the writer going on
        _kill(proc)
        killed_at = time.monotonic()
        for _ in range(3):  # the source goes on while Ferry is down
            time.sleep(0.5)
            switch(src)
        proc, _, _, out = start_serve(
            data, "--target", f"local={data / 'targets'}:2", port=port, log=root / "serve-2.log"
        )
        served.proc, served.out = proc, out
        _replay_resumed(served, mid, killed_at)
        _cut_over_and_check(served, mid, src, writer, data / "targets" / mid)
    finally:
        writer.stop()
        if api is not None:
            api.close()  # type: ignore[attr-defined]
        stop_serve(proc)
        stop_targets(data / "targets")
        src.stop()


def test_agent_killed_during_restore_is_retried_and_restores_once(root: Path) -> None:
    data = root / "data"
    targets = root / "agent-targets"
    src = make_source(root / "s1", big=True)
    proc, port, tport, out = start_serve(data, "--target", "remote")
    token = token_from(out.read_text())
    api = _client(port, token)
    served = Served(data, port, tport, token, proc, out, api)

    def agent(log: Path) -> subprocess.Popen[bytes]:
        return start_agent(log, targets, data, tport, str(data / "state.db"), "--concurrency", "2")

    first = agent(root / "agent-1.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        (record,) = served.create(
            [{"source": str(src.store), "target": "remote", "name": "big", "mode": "offline"}]
        )
        mid = record["id"]
        deadline = time.monotonic() + 120
        while True:  # until the unpack is under way
            now = served.get(mid)
            if now["state"] == "RestoringFull" and (now["status"].get("bytes_done") or 0) > 0:
                break
            assert now["state"] in ("Queued", "Validating", "RestoringFull"), now
            assert time.monotonic() < deadline, now
            time.sleep(0.1)
        _kill(first)
        killed_at = time.monotonic()
        assert (targets / mid / "data.partial").exists(), "killed in the middle of the unpack"
        second = agent(root / "agent-2.log")
        (done,) = served.wait([mid], {"Succeeded"}, timeout=240)
        events = served.events(mid)
        restored = served.steps(mid, "restore_base")
        assert len(restored) == 1 and not restored[0]["data"]["skipped"], [e["message"] for e in restored]
        assert restored[0]["data"]["attempt"] == 2
        assert any("interrupted" in e["message"] for e in events)
        print(
            f"restore finished {time.monotonic() - killed_at:.1f} s after the kill; "
            f"{restored[0]['data']['seconds']} s for the second attempt"
        )
        target = PostgresTarget.open(targets / mid)
        assert count(target, "big") == 1500000
        assert count(target) == ROWS
        assert done["attempt"] == 1  # the workflow did not fail: only the activity was retried
    finally:
        api.close()
        for p in (first, second):
            if p is not None:
                stop_serve(p)
        stop_serve(proc)
        stop_targets(targets)
        src.stop()


def _wait_unpacking(served: Served, mid: str, timeout: float = 120) -> None:
    """Until the base backup's unpack is under way (some bytes written)."""
    deadline = time.monotonic() + timeout
    while True:
        now = served.get(mid)
        if now["state"] == "RestoringFull" and (now["status"].get("bytes_done") or 0) > 0:
            return
        assert now["state"] in ("Queued", "Validating", "RestoringFull"), now
        assert time.monotonic() < deadline, now
        time.sleep(0.1)


def test_serve_killed_during_restore_restores_once(root: Path) -> None:
    """kill -9 of `ferry serve` (API, workflows and the in-process agent) in the middle of an unpack: after
    the restart the restore runs again from the start, once, and the migration finishes with every row."""
    data = root / "data"
    src = make_source(root / "s1", big=True)
    args = ("--target", f"local={data / 'targets'}:2")
    proc, port, tport, out = start_serve(data, *args)
    api = _client(port, token_from(out.read_text()))
    served = Served(data, port, tport, token_from(out.read_text()), proc, out, api)
    try:
        (record,) = served.create(
            [{"source": str(src.store), "target": "local", "name": "big", "mode": "offline"}]
        )
        mid = record["id"]
        _wait_unpacking(served, mid)
        _kill(proc)
        killed_at = time.monotonic()
        assert (data / "targets" / mid / "data.partial").exists(), "killed in the middle of the unpack"
        proc, _, _, out = start_serve(data, *args, port=port, log=root / "serve-2.log")
        served.proc, served.out = proc, out
        (done,) = served.wait([mid], {"Succeeded"}, timeout=240)
        restored = served.steps(mid, "restore_base")
        assert len(restored) == 1, [e["message"] for e in restored]  # one unpack finished, not two
        assert restored[0]["data"]["attempt"] == 2  # type: ignore[index]
        assert any("interrupted" in e["message"] for e in served.events(mid))
        assert len(served.steps(mid, "cutover")) == 1
        print(f"Succeeded {time.monotonic() - killed_at:.1f} s after the kill")
        target = PostgresTarget.open(data / "targets" / mid)
        assert count(target, "big") == 1500000
        assert count(target) == ROWS
        assert done["attempt"] == 1
    finally:
        api.close()
        stop_serve(proc)
        stop_targets(data / "targets")
        src.stop()


@pytest.fixture()
def state_pg(root: Path) -> Iterator[str]:
    """A PostgreSQL server for the service's state store, as a shared deployment has: the URL."""
    from ferry.engines.postgres.cluster import Cluster, free_port
    from tests.integration.pgsource import TEST_SETTINGS

    binaries, user = require_postgres()
    cluster = Cluster(root / "state-pg", free_port(), binaries, user)
    cluster.initdb()
    with (cluster.datadir / "postgresql.conf").open("a") as conf:
        for key, value in TEST_SETTINGS.items():
            conf.write(f"{key} = {value}\n")
    cluster.start()
    try:
        cluster.query("CREATE DATABASE ferry")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/ferry"
    finally:
        cluster.stop(mode="immediate")


def test_agent_killed_during_replay_resumes_on_a_new_agent(root: Path, state_pg: str) -> None:
    """The many-hosts layout: `ferry serve` and a separate agent process sharing a PostgreSQL state store
    and Temporal by address. The agent is killed with -9 while replaying under writes; a new agent takes
    the replay over from the target's own position; after the cutover no row is lost and no step ran
    twice."""
    data = root / "data"
    targets = root / "agent-targets"
    src = make_source(root / "s1")
    proc, port, tport, out = start_serve(data, "--target", "remote", "--store", state_pg)
    token = token_from(out.read_text())
    api = _client(port, token)
    served = Served(data, port, tport, token, proc, out, api)
    writer = RowWriter(src, pause=0.002)

    def agent(log: Path) -> subprocess.Popen[bytes]:
        return start_agent(log, targets, data, tport, state_pg)

    first = agent(root / "agent-1.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        (record,) = served.create([{"source": str(src.store), "target": "remote", "name": "db1"}])
        mid = record["id"]
        writer.start()
        served.wait([mid], {"ReadyForCutover", "RestoringLogs"}, timeout=120)
        switch(src)
        time.sleep(2)
        _kill(first)
        killed_at = time.monotonic()
        for _ in range(3):
            time.sleep(0.5)
            switch(src)
        second = agent(root / "agent-2.log")
        _replay_resumed(served, mid, killed_at)
        _cut_over_and_check(served, mid, src, writer, targets / mid)
    finally:
        writer.stop()
        api.close()
        for p in (first, second):
            if p is not None:
                stop_serve(p)
        stop_serve(proc)
        stop_targets(targets)
        src.stop()
