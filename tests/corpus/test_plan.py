"""Restore plans chosen from the real backup files, in their own layouts and in hostile ones."""

from __future__ import annotations

import json
import random
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from ferry.core.catalog import RecoveryTarget
from ferry.core.plan import DatabasePlan, Plan
from ferry.engines.registry import all_engines
from ferry.pipeline.catalog import build_catalog, build_plan
from ferry.pipeline.discover import scan
from ferry.stores.local import LocalStore

pytestmark = pytest.mark.corpus


def plan_of(path: Path, target: RecoveryTarget | None = None) -> Plan:
    return build_plan(str(path), scan(LocalStore(path), all_engines()), all_engines(), target=target)


def only(plan: Plan, name: str, server: str | None = None) -> DatabasePlan:
    found = [d for d in plan.databases if d.name == name and server in (None, d.server)]
    assert len(found) == 1, [(d.name, d.server) for d in plan.databases]
    return found[0]


def names(db: DatabasePlan) -> list[tuple[str, list[str]]]:
    return [(s.kind.value, [Path(f).name for f in s.files]) for s in db.steps]


def codes(db: DatabasePlan | Plan) -> set[str]:
    items = db.all_findings() if isinstance(db, Plan) else db.findings
    return {f.code for f in items}


def test_restore_time_clean_whole_chain(corpus: Path) -> None:
    db = only(plan_of(corpus / "RestoreTimeClean"), "RestoreTimeClean")
    assert names(db) == [
        ("full", ["RestoreTimeClean.bak"]),
        ("diff", ["RestoreTimeClean2.bak"]),
        ("log", ["RestoreTimeClean2_1.trn"]),
        ("log", ["RestoreTimeClean2_2.trn"]),
        ("log", ["RestoreTimeClean2_3.trn"]),
    ]
    assert db.executable and not db.findings
    assert db.restores_to_lsn == "25000000022000001"
    # Contiguous: each log starts at or before the point the previous step reached.
    for before, after in zip(db.steps[1:], db.steps[2:], strict=False):
        assert int(after.first_lsn) <= int(before.last_lsn) < int(after.last_lsn)


def test_simple_recovery_is_full_plus_latest_differential(corpus: Path) -> None:
    db = only(plan_of(corpus / "sql2008-backups" / "SimpleRecovery"), "SimpleBackTest")
    assert names(db) == [("full", ["SimpleBacktest.bak"]), ("diff", ["SimpleBackTest_2.bak"])]


def test_stop_at_time_marks_the_last_log(corpus: Path) -> None:
    target = RecoveryTarget(time=datetime(2020, 5, 12, 13, 31, 0))
    db = only(plan_of(corpus / "sql2008-backups" / "StopAt", target), "StopAt")
    assert [n for _, [n] in names(db)] == ["StopAt.bak", "StopAt_1.trn", "StopAt_2.trn", "StopAt_21.trn"]
    assert db.steps[-1].stop_at == "2020-05-12T13:31:00+01:00"
    assert all(s.stop_at is None for s in db.steps[:-1])
    assert db.executable


def test_stop_at_lsn(corpus: Path) -> None:
    db = only(plan_of(corpus / "sql2008-backups" / "StopAt", RecoveryTarget(lsn="19:200:1")), "StopAt")
    assert names(db)[-1] == ("log", ["StopAt_21.trn"])
    assert db.steps[-1].stop_at == "lsn:19000000020000001"
    assert db.restores_to_lsn == "19000000020000001"


def test_stop_at_outside_the_backups_is_an_error(corpus: Path) -> None:
    target = RecoveryTarget(time=datetime(2020, 5, 12, 9, 0, 0))
    db = only(plan_of(corpus / "sql2008-backups" / "StopAt", target), "StopAt")
    assert "stop-at-unreachable" in codes(db)
    assert not db.executable


def test_striped_sets_list_every_stripe(corpus: Path) -> None:
    db = only(plan_of(corpus / "sql2008-backups" / "RestoreTimeStripe"), "RestoreTimeStripe")
    assert names(db) == [
        ("full", ["RestoreTimeStripe2.bak", "RestoreTimeStripe2a.bak"]),
        ("log", ["restoretime_21.trn", "restoretime_21a.trn"]),
        ("log", ["RestoreTimeStripe_22.trn", "RestoreTimeStripe_22a.trn"]),
        ("log", ["RestoreTimeStripe_23.trn", "RestoreTimeStripe_23a.trn"]),
    ]
    assert [f.split("/")[0] for f in db.steps[0].files] == ["Stripe1", "Stripe2"]


def test_db1_without_its_full(corpus: Path) -> None:
    db = only(plan_of(corpus / "sql2008-backups"), "db1")
    assert db.steps == ()
    [finding] = [f for f in db.findings if f.code == "no-full-backup"]
    assert finding.severity.value == "error"
    assert len(finding.files) == 4 and all("db1/" in f for f in finding.files)
    assert finding.hint


def test_compressed_striped_chain(corpus: Path) -> None:
    db = only(plan_of(corpus / "more" / "compressed-striped-2016"), "CakeRestoreTest")
    assert names(db) == [
        ("full", ["multiFilesBackup1.bak", "multiFilesBackup2.bak", "multiFilesBackup3.bak"]),
        ("diff", [f"differentialMultiFilesBackup{i}.bak" for i in (1, 2, 3)]),
    ]
    assert db.executable


def test_whole_corpus(corpus: Path) -> None:
    plan = plan_of(corpus)
    assert len(plan.databases) == 28
    blocked = {(d.name, d.server) for d in plan.databases if not d.executable}
    assert blocked == {("db1", "SQL2008"), ("RestoreTimeClean", "WIN-JNMR8KM0U3B\\SQL2016")}
    assert "several-databases" in codes(plan)
    assert {f.code for f in plan.findings if f.files == ("README.md",)} == {"not-a-backup"}


def _copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=lambda _d, files: [f for f in files if f in skip])
    return dst


def test_gap_names_both_sides_and_the_missing_range(corpus: Path, tmp_path: Path) -> None:
    folder = _copy(corpus / "sql2008-backups" / "StopAt", tmp_path / "s", skip=("StopAt_2.trn",))
    db = only(plan_of(folder), "StopAt")
    [gap] = [f for f in db.findings if f.code == "chain-gap"]
    assert gap.files == ("StopAt_1.trn", "StopAt_21.trn")
    assert "19000000018300001" in gap.message and "19000000019300001" in gap.message
    assert names(db)[-1] == ("log", ["StopAt_1.trn"])  # the chain stops before the gap
    assert not db.executable


def test_incomplete_stripe_set(corpus: Path, tmp_path: Path) -> None:
    folder = _copy(corpus / "sql2008-backups" / "RestoreTimeStripe" / "Stripe1", tmp_path / "only1")
    db = only(plan_of(folder), "RestoreTimeStripe")
    assert "stripes-incomplete" in codes(db)
    found = [f for f in db.findings if f.code == "stripes-incomplete"]
    assert any("2" in f.message for f in found)
    assert not db.executable


def test_any_layout_any_names(corpus: Path, tmp_path: Path) -> None:
    """Shuffle a server's files into random nested folders under meaningless names: same chains."""
    source = corpus / "sql2008-backups"
    expected = {(d.name, d.server): [s.first_lsn for s in d.steps] for d in plan_of(source).databases}
    rng = random.Random(7)
    for i, f in enumerate(sorted(p for p in source.rglob("*") if p.is_file())):
        depth = rng.randint(0, 3)
        folder = tmp_path.joinpath(*[rng.choice(["a", "b", "x y", "ü"]) for _ in range(depth)])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, folder / f"{i:03d}{rng.choice(['', '.dat', '.bak', '.trn'])}")
    got = {(d.name, d.server): [s.first_lsn for s in d.steps] for d in plan_of(tmp_path).databases}
    assert got == expected


def test_catalog_restorable_ranges(corpus: Path) -> None:
    path = corpus / "RestoreTimeClean"
    cat = build_catalog(str(path), scan(LocalStore(path), all_engines()), all_engines())
    [db] = cat.databases
    assert db.restorable_from is not None and db.restorable_to is not None
    assert db.restorable_from.isoformat() == "2017-06-01T12:59:12+02:00"
    assert db.restorable_to_lsn == "25000000022000001"
    assert len(db.backups) == 8
    assert json.loads(json.dumps(cat.to_json()))["databases"][0]["name"] == "RestoreTimeClean"
