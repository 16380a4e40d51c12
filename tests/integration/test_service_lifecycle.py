"""The migration service end to end: `ferry serve` (a real Temporal dev server, the state store, the API and
an in-process agent) migrating real PostgreSQL sources through the REST API.

All migrations are created at the start and run side by side; each test then checks its own: three online
migrations created in one batch and cut over in bulk, an offline one, a canceled one and a blocked one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ferry.engines.postgres.archive import ferry_command
from ferry.engines.postgres.cluster import free_port
from ferry.engines.postgres.target import PostgresTarget
from tests.integration.pgsource import PgSource, make_root, require_postgres, start_source

httpx = pytest.importorskip("httpx")
pytest.importorskip("temporalio")

ROWS = 10000


def _wal_push_command(store: Path) -> str:
    return " ".join([*ferry_command(), "wal-push", "%p", str(store)])


def switch(src: PgSource) -> str:
    """Close the segment that holds every write so far and wait until it is archived; the switch LSN.

    pgsource's switch() names the segment from pg_current_wal_lsn(), the *write* position, which lags the
    inserts under synchronous_commit=off: it can return before the last writes are archived. The insert
    position names the right segment."""
    name = str(src.sql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")[0][0])
    lsn = str(src.sql("SELECT pg_switch_wal()")[0][0])
    src.wait_archived(name)
    return lsn


def make_source(folder: Path, big: bool = False) -> PgSource:
    store = folder / "store"
    src = start_source(folder / "src", store, archive_command=_wal_push_command(store))
    src.write(5000)
    if big:
        src.sql(
            "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g + 1)::text) AS v "
            "FROM generate_series(1, 1500000) g"
        )
    src.base_backup(f"base-{time.time_ns()}", compress="gzip" if big else "lz4", wal_method="none")
    src.write(5000)
    switch(src)
    return src


def count(connectable: Any, table: str = "ferry_t") -> int:
    with connectable.connect() as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@dataclass
class Served:
    """A running `ferry serve` subprocess and a client of its API."""

    data: Path
    port: int
    temporal_port: int
    token: str
    proc: subprocess.Popen[bytes]
    out: Path
    api: Any  # httpx.Client

    def get(self, migration_id: str) -> dict[str, Any]:
        r = self.api.get(f"/api/v1/migrations/{migration_id}")
        r.raise_for_status()
        return dict(r.json()["migration"])

    def events(self, migration_id: str) -> list[dict[str, Any]]:
        r = self.api.get(f"/api/v1/migrations/{migration_id}/events")
        r.raise_for_status()
        return list(r.json()["events"])

    def steps(self, migration_id: str, step: str | None = None) -> list[dict[str, Any]]:
        """The migration's "step" events (of one step), oldest first."""
        return [
            e
            for e in self.events(migration_id)
            if e["kind"] == "step" and (step is None or e["data"].get("step") == step)
        ]

    def create(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        r = self.api.post("/api/v1/migrations", json={"migrations": items})
        assert r.status_code == 201, r.text
        return list(r.json()["migrations"])

    def wait(self, ids: list[str], states: set[str], timeout: float = 120) -> list[dict[str, Any]]:
        """Until every migration is in one of `states`; a final state that is not wanted fails at once."""
        deadline = time.monotonic() + timeout
        while True:
            records = [self.get(i) for i in ids]
            if all(r["state"] in states for r in records):
                return records
            for r in records:
                if r["state"] in {"Succeeded", "Failed", "Canceled"} - states:
                    pytest.fail(f"{r['name']} ended {r['state']}: {r['error']}\n{self._log(r['id'])}")
            if time.monotonic() > deadline:
                lines = [f"{r['name']}: {r['state']} {r['status'].get('phase')}" for r in records]
                pytest.fail(
                    "timed out waiting for "
                    + ", ".join(sorted(states))
                    + ":\n"
                    + "\n".join(lines)
                    + "\n"
                    + "\n".join(self._log(r["id"]) for r in records)
                )
            time.sleep(0.3)

    def _log(self, migration_id: str) -> str:
        return "\n".join(f"  {e['kind']}: {e['message']}" for e in self.events(migration_id))


def start_serve(
    data: Path,
    *extra: str,
    port: int | None = None,
    temporal_port: int | None = None,
    log: Path | None = None,
) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    port = port or free_port()
    temporal_port = temporal_port or free_port()
    out = log or data.parent / f"serve-{time.time_ns()}.log"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [
                *ferry_command(),
                "serve",
                "--data",
                str(data),
                "--port",
                str(port),
                "--temporal-port",
                str(temporal_port),
                *extra,
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    wait_line(out, "ready", proc)
    return proc, port, temporal_port, out


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (steps are handed back to Temporal), SIGKILL after a minute."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_line(
    path: Path, needle: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"ferry exited ({proc.returncode}) before '{needle}':\n{text}")
        time.sleep(0.1)
    raise AssertionError(f"'{needle}' never appeared in {path}:\n{path.read_text(errors='replace')}")


def temporal_client(served: Served) -> Any:
    """A client of the embedded Temporal as Ferry's own processes make one: its gate's client
    certificate and the codec key, both in the data folder."""
    from ferry.service.codec import load_key
    from ferry.service.temporal_dev import connect
    from ferry.service.tls import GateFiles

    tls = GateFiles(served.data / "tls").client
    return connect(f"127.0.0.1:{served.temporal_port}", load_key(served.data / "codec.key"), tls=tls)


def query_status(served: Served, migration_id: str) -> dict[str, Any]:
    """The workflow's `status` query, through Temporal itself."""

    async def query() -> dict[str, Any]:
        client = await temporal_client(served)
        return dict(await client.get_workflow_handle(migration_id).query("status"))

    return asyncio.run(query())


def token_from(text: str) -> str:
    line = next(x for x in text.splitlines() if x.startswith("API token"))
    return line.rsplit(" ", 1)[-1]


def stop_targets(targets: Path) -> None:
    for record in targets.glob("*/ferry-target.json"):
        try:
            target = PostgresTarget.open(record.parent)
            if target.data.exists() and target.cluster.is_running():
                target.stop("immediate")
        except Exception:
            pass


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    require_postgres()
    with make_root("ferry-svc-") as folder:
        yield folder


@pytest.fixture(scope="module")
def served(root: Path) -> Iterator[Served]:
    data = root / "data"
    proc, port, tport, out = start_serve(data, "--target", f"local={data / 'targets'}:4")
    token = token_from(out.read_text())
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    try:
        yield Served(data, port, tport, token, proc, out, api)
    finally:
        api.close()
        stop_serve(proc)
        stop_targets(data / "targets")


@dataclass
class Scenario:
    sources: dict[str, PgSource]
    ids: dict[str, str]  # source name -> migration id
    started: float
    created_seconds: float
    missing: str  # the WAL segment removed from the blocked source's store


@pytest.fixture(scope="module")
def scenario(root: Path, served: Served) -> Iterator[Scenario]:
    names = ["on1", "on2", "on3", "off", "cancel", "blocked"]
    with ThreadPoolExecutor(len(names)) as pool:
        made = dict(zip(names, pool.map(lambda n: make_source(root / n), names), strict=True))
    blocked = made["blocked"]
    blocked.write(2000)
    switch(blocked)
    blocked.write(2000)
    switch(blocked)
    blocked.stop()
    segments = sorted(p for p in (blocked.store / "wal").glob("0*") if len(p.name) == 24)
    hole = segments[-2]
    hole.rename(root / hole.name)  # a hole with archived WAL after it (put back to test the retry)
    started = time.monotonic()
    online = served.create(
        [{"source": str(made[n].store), "target": "local", "name": n} for n in ("on1", "on2", "on3")]
    )
    created = time.monotonic() - started
    others = served.create(
        [
            {"source": str(made["off"].store), "target": "local", "name": "off", "mode": "offline"},
            {"source": str(made["cancel"].store), "target": "local", "name": "cancel"},
            {"source": str(made["blocked"].store), "target": "local", "name": "blocked", "mode": "offline"},
        ]
    )
    ids = {r["name"]: r["id"] for r in online + others}
    try:
        yield Scenario(made, ids, started, created, hole.name)
    finally:
        for src in made.values():
            if src.cluster.is_running():
                src.stop()


def test_blocked_source_fails_with_the_findings_message(served: Served, scenario: Scenario) -> None:
    mid = scenario.ids["blocked"]
    (record,) = served.wait([mid], {"Failed"}, timeout=60)
    assert record["error"] and "is blocked" in record["error"] and scenario.missing in record["error"]
    assert not (served.data / "targets" / mid).exists(), "a blocked migration must not touch the target"
    kinds = [(e["kind"], e["data"].get("to")) for e in served.events(mid)]
    assert ("state", "Failed") in kinds


def test_retry_of_a_failed_migration_runs_it_again(root: Path, served: Served, scenario: Scenario) -> None:
    mid = scenario.ids["blocked"]
    served.wait([mid], {"Failed"}, timeout=60)
    src = scenario.sources["blocked"]
    (root / scenario.missing).rename(src.store / "wal" / scenario.missing)  # the segment arrives after all
    r = served.api.post(f"/api/v1/migrations/{mid}/retry")
    assert r.status_code == 202, r.text
    (record,) = served.wait([mid], {"Succeeded"}, timeout=120)
    assert record["attempt"] == 2 and record["error"] is None
    target = PostgresTarget.open(served.data / "targets" / mid)
    assert count(target) == ROWS + 4000


def test_offline_restores_and_promotes(served: Served, scenario: Scenario) -> None:
    mid = scenario.ids["off"]
    (record,) = served.wait([mid], {"Succeeded"}, timeout=120)
    target = PostgresTarget.open(served.data / "targets" / mid)
    assert count(target) == count(scenario.sources["off"].cluster) == ROWS
    target.verify_writable()
    states = [e["data"]["to"] for e in served.events(mid) if e["kind"] == "state"]
    assert states == ["Queued", "Validating", "RestoringFull", "RestoringLogs", "CuttingOver", "Succeeded"]
    steps = [e["data"]["step"] for e in served.steps(mid)]
    assert steps == ["validate", "restore_base", "replay", "cutover"]
    assert record["status"]["result"]["promoted_at_lsn"]


def test_cancel_stops_the_target_and_leaves_the_source_alone(served: Served, scenario: Scenario) -> None:
    mid = scenario.ids["cancel"]
    src = scenario.sources["cancel"]
    served.wait([mid], {"ReadyForCutover", "RestoringLogs"}, timeout=120)
    before = sorted((p.relative_to(src.store), p.stat().st_size) for p in src.store.rglob("*") if p.is_file())
    rows = count(src.cluster)
    r = served.api.post(f"/api/v1/migrations/{mid}/cancel")
    assert r.status_code == 202, r.text
    served.wait([mid], {"Canceled"}, timeout=60)
    folder = served.data / "targets" / mid
    target = PostgresTarget.open(folder)
    assert not target.cluster.is_running(), "cancel stops the target server"
    assert target.data.is_dir() and (target.data / "standby.signal").exists(), "its folder stays as it was"
    assert (folder / "ferry-canceled").exists(), "a late replay attempt may not start the server again"
    time.sleep(2)
    assert not target.cluster.is_running()
    after = sorted((p.relative_to(src.store), p.stat().st_size) for p in src.store.rglob("*") if p.is_file())
    assert after == before and count(src.cluster) == rows, "the source and its store are untouched"
    steps = served.steps(mid, "stop_target")
    assert steps and "stopped" in steps[0]["message"]
    r = served.api.post(f"/api/v1/migrations/{mid}/cancel")
    assert r.status_code == 409  # Canceled is final


def test_three_online_migrations_cut_over_in_bulk(served: Served, scenario: Scenario) -> None:
    names = ["on1", "on2", "on3"]
    ids = [scenario.ids[n] for n in names]
    served.wait(ids, {"ReadyForCutover"}, timeout=120)
    ready_after = time.monotonic() - scenario.started
    deadline = time.monotonic() + 10
    while (view := query_status(served, ids[0]))["state"] != "ReadyForCutover":  # the workflow's own view
        assert time.monotonic() < deadline, view
        time.sleep(0.2)
    assert view["status"]["target_position"] and not view["cutover_requested"]
    finals: dict[str, str] = {}
    for n in names:  # the sources go on, then the applications stop: the last segment is the final LSN
        src = scenario.sources[n]
        src.write(3000)
        finals[scenario.ids[n]] = switch(src)
    r = served.api.post("/api/v1/migrations/cutover", json={"ids": ids, "final_lsn": finals})
    assert r.status_code == 202, r.text
    assert sorted(a["id"] for a in r.json()["accepted"]) == sorted(ids)
    records = served.wait(ids, {"Succeeded"}, timeout=120)
    for n, record in zip(names, records, strict=True):
        target = PostgresTarget.open(served.data / "targets" / record["id"])
        assert count(target) == count(scenario.sources[n].cluster) == ROWS + 3000
        result = record["status"]["result"]
        assert result["final_lsn"] == finals[record["id"]].upper() or result["final_lsn"]
        assert result["downtime_seconds"] is not None and result["downtime_seconds"] < 60
        events = served.events(record["id"])
        states = [e["data"]["to"] for e in events if e["kind"] == "state"]
        assert states[:4] == ["Queued", "Validating", "RestoringFull", "RestoringLogs"]
        assert "ReadyForCutover" in states and states[-2:] == ["CuttingOver", "Succeeded"]
        restores = served.steps(record["id"], "restore_base")
        assert len(restores) == 1 and restores[0]["data"]["bytes"] > 0 and restores[0]["data"]["seconds"] >= 0
    print(f"created 3 in {scenario.created_seconds:.2f} s; all ready after {ready_after:.1f} s")
    if os.environ.get("FERRY_TEST_DUMP"):
        import json

        print(json.dumps(records[0], indent=1))
        for e in served.events(records[0]["id"]):
            print(e["seq"], e["kind"], e["message"], json.dumps(e["data"])[:300])


def test_cutover_of_a_finished_migration_is_refused(served: Served, scenario: Scenario) -> None:
    mid = scenario.ids["off"]
    served.wait([mid], {"Succeeded"})
    r = served.api.post("/api/v1/migrations/cutover", json={"ids": [mid]})
    assert r.status_code == 409, r.text


def test_temporal_dev_server_keeps_its_file_in_the_data_folder(served: Served) -> None:
    assert (served.data / "temporal.db").is_file()
    assert (served.data / "log" / "temporal.log").is_file()
    assert os.stat(served.data / "temporal.db").st_mode & 0o077 == 0


def test_a_hundred_migrations_start_in_seconds(served: Served) -> None:
    """Creating and starting 100 is one request and one round of workflow starts; each then fails on its
    own (its source does not exist) without waiting for the others."""
    started = time.monotonic()
    records = served.create(
        [{"source": f"/nonexistent/ferry-db{i}", "target": "local", "name": f"many-{i}"} for i in range(100)]
    )
    created = time.monotonic() - started
    assert len(records) == 100
    done = served.wait([r["id"] for r in records], {"Failed"}, timeout=120)
    finished = time.monotonic() - started
    assert all("does not exist" in (r["error"] or "") for r in done)
    print(f"100 migrations created and started in {created:.2f} s, all Failed after {finished:.1f} s")


def test_unusable_paths_fail_at_once_and_the_log_stays_one_line_each(served: Served) -> None:
    """A 4,095-byte path component fails validate once, with the reason and no retry; a newline in a
    source does not split serve's log; expected errors leave no traceback there (the hundred missing
    sources above included)."""
    long, forged = f"/n/{'x' * 4093}", "/nonexistent/a\nFORGED log line"
    records = served.create(
        [
            {"source": long, "target": "local", "name": "too-long"},
            {"source": forged, "target": "local", "name": "nl"},
        ]
    )
    done = served.wait([r["id"] for r in records], {"Failed"}, timeout=60)
    assert "File name too long" in (done[0]["error"] or ""), done[0]
    failures = [e for e in served.events(records[0]["id"]) if e["kind"] == "error"]
    assert len(failures) == 1 and "File name too long" in failures[0]["message"], failures
    assert "hint:" in failures[0]["message"]
    log = served.out.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert not any(line.startswith("FORGED") for line in log.splitlines())
    assert sum("does not exist" in line for line in log.splitlines()) <= 110


def test_a_newest_wal_file_that_is_no_segment_fails_validate_with_the_reason(
    root: Path, served: Served
) -> None:
    """Offline, the store's newest file named like a segment is a FIFO, or 1 MiB of something else: the
    migration does not wait in RestoringLogs for ever, it fails at validate, naming the file."""
    sources = {"fifo": make_source(root / "bad-fifo"), "short": make_source(root / "bad-short")}
    bad = {}
    try:
        for kind, src in sources.items():
            src.stop()
            last = sorted(p.name for p in (src.store / "wal").glob("0*") if len(p.name) == 24)[-1]
            name = f"{last[:16]}{int(last[16:], 16) + 1:08X}"
            if kind == "fifo":
                os.mkfifo(src.store / "wal" / name)
            else:
                (src.store / "wal" / name).write_bytes(os.urandom(1 << 20))
            bad[kind] = name
        records = served.create(
            [{"source": str(src.store), "target": "local", "name": f"bad-{kind}", "mode": "offline"}
             for kind, src in sources.items()]
        )  # fmt: skip
        done = served.wait([r["id"] for r in records], {"Failed"}, timeout=90)
        for record, kind in zip(done, sources, strict=True):
            assert bad[kind] in (record["error"] or "") and "is not one" in (record["error"] or ""), record
            states = [e["data"]["to"] for e in served.events(record["id"]) if e["kind"] == "state"]
            assert "RestoringLogs" not in states
    finally:
        for src in sources.values():
            if src.cluster.is_running():
                src.stop()


def test_serve_says_when_the_temporal_port_is_taken(root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*ferry_command(), "serve", "--data", str(root / "other"), "--port",
                               str(free_port()), "--temporal-port", str(port)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"port {port}" in done.stderr and "already in use" in done.stderr and "hint:" in done.stderr


def test_the_cli_drives_a_whole_online_migration(root: Path, served: Served) -> None:
    """`ferry migrations create|list|show|cutover|events` against the running service, as a DBA uses them:
    an online migration created, watched until ReadyForCutover, cut over with its final LSN, Succeeded."""
    import json

    src = make_source(root / "cli-src")
    env = {**os.environ, "FERRY_API": f"http://127.0.0.1:{served.port}", "FERRY_TOKEN": served.token}

    def ferry(*args: str) -> Any:
        done = subprocess.run(
            [*ferry_command(), "migrations", *args, "--json"], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    try:
        (created,) = ferry("create", str(src.store), "--target", "local", "--name", "cli-db")["migrations"]
        mid = created["id"]
        assert any(m["id"] == mid for m in ferry("list", "--target", "local")["migrations"])
        deadline = time.monotonic() + 120
        while (shown := ferry("show", mid)["migration"])["state"] != "ReadyForCutover":
            assert shown["state"] not in ("Failed", "Canceled"), shown
            assert time.monotonic() < deadline, shown
            time.sleep(0.5)
        assert shown["status"]["details"]["full_backup_restored"] is True
        src.write(1000)  # the application's last writes, then the final switch
        final = switch(src)
        ferry("cutover", mid, "--final-lsn", final)
        (record,) = served.wait([mid], {"Succeeded"}, timeout=120)
        assert ferry("show", mid)["migration"]["state"] == "Succeeded"
        events = ferry("events", mid)["events"]
        assert [e["data"]["step"] for e in events if e["kind"] == "step"] == [
            "validate",
            "restore_base",
            "replay",
            "cutover",
        ]
        target = PostgresTarget.open(served.data / "targets" / mid)
        assert count(target) == count(src.cluster) == ROWS + 1000
        assert record["status"]["result"]["final_lsn"] == final
    finally:
        src.stop()


def test_service_reads_wal_where_another_archive_command_put_it(root: Path, served: Served) -> None:
    """WAL nested by date and compressed by gzip, as `archive_command = 'gzip -c %p > ...'` leaves it: the
    plan finds it, and the service's replay fetches each file from the key the plan found it at."""
    store = root / "gz-store"
    folder = store / "archive" / "2026" / "12"
    src = start_source(
        root / "gz-src",
        store,
        archive_subdir="archive/2026/12",
        archive_command=f"gzip -c %p > {folder}/%f.gz",
    )
    src.archive_suffix = ".gz"
    try:
        src.write(5000)
        src.base_backup("base", compress="lz4", wal_method="none")
        src.write(5000)
        switch(src)
        (created,) = served.create(
            [{"source": str(store), "target": "local", "name": "gz", "mode": "offline"}]
        )
        (record,) = served.wait([created["id"]], {"Succeeded"}, timeout=120)
        target = PostgresTarget.open(served.data / "targets" / created["id"])
        assert count(target) == count(src.cluster) == ROWS
        assert record["status"].get("lag_bytes") is None, "no lag is shown once a migration succeeded"
    finally:
        src.stop()
