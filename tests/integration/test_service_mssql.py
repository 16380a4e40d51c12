"""SQL Server migrations in `ferry serve`, against the restore model, beside PostgreSQL: one migration per
database of a store (all or nothing), per-file statuses as a new log backup lands, cutover of one (waiting
for a named tail-log backup) and of all ready ones, cancel with and without --drop, the targets route and
scans in the API. Every backup is restored exactly once, as the model's restore history counts.

One `ferry serve` and one model serve the module; each test uses databases of its own and leaves its
migrations finished, so `cutover --all-ready` takes only its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mssqlservice import (
    RTC,
    RTC_BASE,
    RTC_LAST_LSN,
    RTC_LOGS,
    STOPAT,
    MssqlServed,
    corpus,
    file_status,
    files_by_status,
    once_each,
    postgres_usable,
    serve_with_model,
    sql2008_files,
)
from tests.integration.pgsource import make_root


@pytest.fixture(scope="module")
def ms() -> Iterator[MssqlServed]:
    # The PostgreSQL target's folder must be reachable by the servers' OS user: not under pytest's tmp.
    with make_root("ferry-svc-mssql-") as root:
        yield from serve_with_model(root, pg_root=root / "pg-targets" if postgres_usable() else None)


def _created(done: Any) -> list[dict[str, Any]]:
    return list(json.loads(done.stdout)["migrations"])


def test_create_makes_one_migration_per_database_all_or_nothing(ms: MssqlServed) -> None:
    store = ms.store("many")
    for db in ("db2", "ft1", "db1"):  # db1 has no full backup: blocked
        ms.add(store, *sql2008_files(db))
    ms.add(store, "StopAt.bak", "StopAt_1.trn", folder=STOPAT)
    before = ms.ids()

    blocked = ms.cli("create", str(store), "--target", "ms", check=1)
    assert "db1" in blocked.stderr and "--database" in blocked.stderr, blocked.stderr
    unknown = ms.cli("create", str(store), "--target", "ms", "--database", "nope", check=None)
    assert unknown.returncode != 0 and "nope" in unknown.stderr, unknown.stderr
    assert ms.ids() == before, "a refused create creates nothing"

    picked = ["db2", "StopAt", "ft1"]
    done = ms.cli(
        "create", str(store), "--target", "ms", *(a for d in picked for a in ("--database", d)), "--json"
    )
    made = {m["name"]: m for m in _created(done)}
    assert sorted(made) == sorted(picked) and {m["database"] for m in made.values()} == set(picked)
    ids = {name: m["id"] for name, m in made.items()}
    ms.wait(list(ids.values()), {"ReadyForCutover"})
    assert ms.counts.db_state("db2") == "RESTORING"

    # cancel leaves the database RESTORING, for inspection; --drop removes it
    ms.cli("cancel", "db2")
    ms.cli("cancel", "ft1", "--drop")
    ms.wait([ids["db2"], ids["ft1"]], {"Canceled"})
    assert ms.counts.db_state("db2") == "RESTORING"
    assert ms.counts.database("ft1") is None

    # cutover waiting for a named last (tail-log) backup that is not in the store yet; the logs after it
    # (StopAt_21, StopAt_23) never arrive and are not waited for
    ms.cli("cutover", "StopAt", "--last-backup", "StopAt_2.trn")
    ms.until(ids["StopAt"], lambda r: r["state"] == "CuttingOver" and "StopAt_2.trn" in str(r["status"]),
             "the cutover waits for the named last backup")  # fmt: skip
    ms.add(store, "StopAt_2.trn", folder=STOPAT)
    (record,) = ms.wait([ids["StopAt"]], {"Succeeded"})
    result = record["status"]["result"]
    assert result["last_backup"] == "StopAt_2.trn" and result["lsn_proof"] is True
    assert result["restored_last_lsn"] == "19000000019300001" and result["downtime_seconds"] > 0
    assert ms.counts.db_state("StopAt") == "ONLINE"
    once_each(ms.counts, "StopAt", 3)  # the full backup and two logs


def test_new_log_backups_reach_the_plan_with_per_file_statuses(ms: MssqlServed) -> None:
    store = ms.store("rtc")
    ms.add(store, *RTC_BASE, RTC_LOGS[0])
    (made,) = _created(ms.cli("create", str(store), "--target", "ms", "--json"))
    mid = made["id"]
    assert made["name"] == RTC and made["database"] == RTC
    (record,) = ms.wait([mid], {"ReadyForCutover"})
    status = record["status"]
    assert {file_status(record, n) for n in (*RTC_BASE, RTC_LOGS[0])} == {"Restored"}
    assert status["last_file"] == RTC_LOGS[0] and status["pending_files"] == 0
    assert status["details"]["last_restored_lsn"] == status["target_position"]
    assert status["lag_bytes"] == 0 and status["blocked_reason"] is None

    # a file still being copied is Held; a log the differential already covers is Skipped, with why
    (store / "upload.trn").write_bytes((corpus() / RTC / RTC_LOGS[1]).read_bytes()[:20000])
    ms.add(store, "RestoreTimeClean_1.trn")
    record = ms.until(
        mid,
        lambda r: (
            file_status(r, "upload.trn") == "Held" and file_status(r, "RestoreTimeClean_1.trn") == "Skipped"
        ),
        "Held and Skipped files",
    )
    assert "already applied" in files_by_status(record)["RestoreTimeClean_1.trn"]["reason"]
    (store / "upload.trn").unlink()

    # the third log before the second: it arrives, waits, and the status says what is missing
    ms.add(store, RTC_LOGS[2])
    record = ms.until(mid, lambda r: file_status(r, RTC_LOGS[2]) == "Arrived", "the third log arrived")
    status = record["status"]
    assert status["pending_files"] == 1 and status["lag_bytes"] > 0 and status["lag_seconds"] > 0
    assert status["blocked_reason"] and "missing" in status["blocked_reason"], status["blocked_reason"]

    # the second log lands: restored slowly enough to be seen Restoring while the third is Queued
    ms.model.config.restore_mbps = 0.02
    try:
        ms.add(store, RTC_LOGS[1])
        record = ms.until(
            mid, lambda r: file_status(r, RTC_LOGS[1]) == "Restoring", "the second log restoring"
        )
        assert record["status"]["current_file"] == RTC_LOGS[1]
        assert file_status(record, RTC_LOGS[2]) in {"Queued", "Restoring", "Restored"}
    finally:
        ms.model.config.restore_mbps = 50.0
    record = ms.until(mid, lambda r: r["status"]["last_file"] == RTC_LOGS[2], "every log restored")
    assert record["status"]["target_position"] == RTC_LAST_LSN and record["status"]["pending_files"] == 0

    ms.cli("cutover", RTC)
    (record,) = ms.wait([mid], {"Succeeded"})
    result = record["status"]["result"]
    assert result["restored_last_lsn"] == RTC_LAST_LSN and result["downtime_seconds"] > 0
    assert ms.counts.db_state(RTC) == "ONLINE"
    once_each(ms.counts, RTC, 5)
    steps = [e["data"]["step"] for e in ms.served.steps(mid)]
    assert steps.count("restore_base") == 1 and steps.count("cutover") == 1


def test_all_ready_cuts_over_sql_server_and_postgres_side_by_side(ms: MssqlServed) -> None:
    from tests.integration.pgsource import require_postgres
    from tests.integration.test_service_lifecycle import count, make_source

    require_postgres()
    src = make_source(ms.stores.parent / "pgsrc")
    try:
        store = ms.store("side")
        ms.add(store, *sql2008_files("dbareports"))
        (pg,) = _created(ms.cli("create", str(src.store), "--target", "pg", "--json"))
        (sql,) = _created(ms.cli("create", str(store), "--target", "ms", "--json"))
        assert pg["database"] is None and sql["database"] == "dbareports"
        ms.wait([pg["id"], sql["id"]], {"ReadyForCutover"})
        listed = ms.cli("list", "--state", "ReadyForCutover", "--json")
        assert {m["id"] for m in json.loads(listed.stdout)["migrations"]} == {pg["id"], sql["id"]}
        ms.cli("cutover", "--all-ready")
        ms.wait([pg["id"], sql["id"]], {"Succeeded"})
        from ferry.engines.postgres.target import PostgresTarget

        assert count(PostgresTarget.open(ms.stores.parent / "pg-targets" / pg["id"])) == count(src.cluster)
        assert ms.counts.db_state("dbareports") == "ONLINE"
        once_each(ms.counts, "dbareports", 2)  # full and the newer differential (its logs add nothing)
    finally:
        if src.cluster.is_running():
            src.stop()
        from tests.integration.test_service_lifecycle import stop_targets

        stop_targets(ms.stores.parent / "pg-targets")


def test_targets_route_shows_facts_and_load(ms: MssqlServed) -> None:
    def targets() -> dict[str, dict[str, Any]]:
        answer = ms.api.get("/api/v1/targets")
        assert answer.status_code == 200, answer.text
        return {t["name"]: t for t in answer.json()["targets"]}

    found = targets()
    assert found["ms"]["engine"] == "sqlserver"
    assert "pg" not in found or found["pg"]["engine"] == "postgres"
    assert found["ms"]["concurrency"] == 4 and "running" in found["ms"] and "restoring" in found["ms"]
    facts = found["ms"]["facts"]
    assert facts["version"] == "15.0.2000.5" and facts["error"] is None and facts["free_bytes"] > 0
    assert "PASSW" not in json.dumps(found).upper()


def test_scans_in_the_api_answer_what_ferry_plan_prints(ms: MssqlServed) -> None:
    store = ms.store("scan")
    ms.add(store, *sql2008_files("db2"), *sql2008_files("db1"))
    answer = ms.api.post("/api/v1/scans", json={"location": str(store), "wait_seconds": 60})
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["state"] == "done"
    ferry = ms.cli("scan", str(store), "--json", check=1)  # db1 is blocked: findings, exit 1
    assert json.loads(ferry.stdout)["databases"] == job["plan"]["databases"]
    plan = _plan(store)
    assert [d["name"] for d in job["plan"]["databases"]] == [d["name"] for d in plan["databases"]]
    assert [d["steps"] for d in job["plan"]["databases"]] == [d["steps"] for d in plan["databases"]]

    missing = ms.api.post("/api/v1/scans", json={"location": str(store / "nope"), "wait_seconds": 60}).json()
    assert missing["state"] == "failed" and "nope" in missing["error"]["message"]
    refused = ms.api.post("/api/v1/scans", json={"location": "ftp://host/x"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_source"
    assert ms.api.get("/api/v1/scans/scan-nope").status_code == 404


def _plan(store: Path) -> dict[str, Any]:
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run([sys.executable, "-m", "ferry", "plan", str(store), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    return dict(json.loads(done.stdout))
