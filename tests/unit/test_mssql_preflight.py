"""Preflight's pure checks, without a server: file moves and relocation, free space, existing databases,
single-user waits, and the log view's statuses on real corpus headers."""

from __future__ import annotations

from pathlib import Path

from ferry.engines.sqlserver import preflight as pf
from ferry.engines.sqlserver.engine import SqlServerEngine
from ferry.engines.sqlserver.facts import DatabaseRow, FileRow, Probe, TargetFacts, Volume
from ferry.engines.sqlserver.follow import Identity, held_files, split, view
from ferry.engines.sqlserver.headers import DatabaseFile
from ferry.pipeline.discover import scan
from ferry.stores.local import LocalStore
from tests.conftest import corpus_root


def _facts(**over: object) -> TargetFacts:
    base: dict[str, object] = dict(
        product_version="15.0.2000.5", edition="Developer", engine_edition=3, instance_name=None,
        server_name="S", login="ferry", single_user=False, data_path="C:\\Data\\", log_path="C:\\Logs\\",
        is_sysadmin=False, is_dbcreator=True, can_create_database=True,
        databases=(DatabaseRow("Other", 7, 0, 0, False, False),),
        files=(FileRow(7, 1, 0, "Other", "C:\\Data\\Sales.mdf", 8192),),
        volumes=(Volume("C:\\", 10**12, 10**9),),
    )  # fmt: skip
    base.update(over)
    return TargetFacts(**base)  # type: ignore[arg-type]


def _file(logical: str, physical: str, kind: str = "D", size: int = 10**6) -> DatabaseFile:
    return DatabaseFile(logical, physical, kind, None, size, 0, 1, 0, 0, None, None, size, 1)


FILES = [_file("Sales", "E:\\old\\Sales.mdf"), _file("Sales_log", "E:\\old\\Sales_log.ldf", "L")]


def test_files_go_to_the_default_folders_and_taken_names_are_relocated() -> None:
    facts = _facts()
    plan = pf.plan_moves(FILES, "C:\\Data\\", "C:\\Logs\\", facts, {})
    # Sales.mdf belongs to database Other (case-insensitively on Windows): relocated at once.
    assert plan.moves == {"Sales": "C:\\Data\\Sales_2.mdf", "Sales_log": "C:\\Logs\\Sales_log.ldf"}
    assert plan.relocated == (("Sales", "C:\\Data\\Sales.mdf", "C:\\Data\\Sales_2.mdf"),)
    assert set(plan.unprobed) == {"C:\\Data\\Sales_2.mdf", "C:\\Logs\\Sales_log.ldf"}
    probes = {p: Probe(False, False, True) for p in plan.unprobed}
    probes["C:\\Logs\\Sales_log.ldf"] = Probe(True, False, True)  # a stray file on disk
    again = pf.plan_moves(FILES, "C:\\Data\\", "C:\\Logs\\", facts, probes)
    assert again.moves["Sales_log"] == "C:\\Logs\\Sales_log_2.ldf" and again.unprobed == (
        "C:\\Logs\\Sales_log_2.ldf",
    )
    found = {f.code: f for f in pf.move_findings(again, "t", "Sales")}
    assert "Sales_log_2.ldf" in found["files-relocated"].message and "file-moves" in found


def test_files_of_the_replaced_database_are_free() -> None:
    plan = pf.plan_moves(
        FILES, "C:\\Data\\", "C:\\Logs\\", _facts(), {}, own=frozenset({"C:\\Data\\Sales.mdf"})
    )
    assert plan.moves["Sales"] == "C:\\Data\\Sales.mdf" and not plan.relocated


def test_names_other_migrations_chose_are_taken_though_not_on_the_target_yet() -> None:
    claimed = frozenset({"C:\\Logs\\Sales_log.ldf"})
    plan = pf.plan_moves(FILES, "C:\\Data\\", "C:\\Logs\\", _facts(), {}, claimed=claimed)
    assert plan.moves["Sales_log"] == "C:\\Logs\\Sales_log_2.ldf"


def test_migrations_prepared_at_once_place_their_files_one_after_another(tmp_path: Path) -> None:
    from ferry.engines.sqlserver.connection import TargetUrl
    from ferry.engines.sqlserver.workdir import WorkFolder

    url = TargetUrl.parse("mssql://sa@h:1433")
    first, second = WorkFolder(tmp_path, url, "Sales"), WorkFolder(tmp_path, url, "Sales2")
    with first.placing() as taken:
        assert taken == set()
        first.place({"Sales": "C:\\Data\\Sales.mdf"})
    with second.placing() as taken:
        assert taken == {"C:\\Data\\Sales.mdf"}
    first.forget()  # as a new migration of the database does, just before it writes its claim
    with second.placing() as taken:
        assert taken == {"C:\\Data\\Sales.mdf"}, "still taken until the claim is written"
    first.write_claim({"moves": {"Sales": "C:\\Data\\Sales.mdf", "Sales_log": "C:\\Logs\\S.ldf"}})
    with second.placing() as taken:
        assert taken == {"C:\\Data\\Sales.mdf", "C:\\Logs\\S.ldf"}


def test_posix_paths_are_case_sensitive() -> None:
    facts = _facts(
        files=(FileRow(7, 1, 0, "x", "/data/sales.mdf", 0),), data_path="/data/", log_path="/data/"
    )
    plan = pf.plan_moves([_file("S", "/old/Sales.mdf")], "/data", "/data", facts, {})
    assert plan.moves == {"S": "/data/Sales.mdf"}


def test_free_space_per_volume() -> None:
    facts = _facts(volumes=(Volume("C:\\", 10**12, 1_500_000), Volume("D:\\", 10**12, 10**9)))
    moves = {"Sales": "C:\\Data\\Sales.mdf", "Sales_log": "C:\\Logs\\Sales_log.ldf"}
    found = pf.check_space({"Sales": 10**6, "Sales_log": 10**6}, moves, facts, "t")
    assert [f.code for f in found] == ["free-space"] and "2000000 bytes" in found[0].message
    assert (
        pf.check_space({"Sales": 10**6, "Sales_log": 10**6}, moves, facts, "t", [("C:\\x.mdf", 10**6)]) == []
    )
    unknown = pf.check_space({"Sales": 1}, {"Sales": "F:\\x.mdf"}, facts, "t")
    assert [f.code for f in unknown] == ["free-space-unknown"]


def test_existing_database_rules() -> None:
    db = DatabaseRow("Sales", 9, 0, 0, False, False, sessions=2)
    want = pf.Wanted("Sales")
    assert pf.check_existing(None, want, "t", False) == ([], False)
    assert pf.check_existing(db, want, "t", True) == ([], False)  # this migration's own: a resume
    codes = lambda w: [f.code for f in pf.check_existing(db, w, "t", False)[0]]  # noqa: E731
    assert codes(want) == ["database-exists"]
    assert codes(pf.Wanted("Sales", replace=True)) == ["database-exists"]
    assert codes(pf.Wanted("Sales", replace=True, yes=True)) == ["database-in-use"]
    found, close = pf.check_existing(db, pf.Wanted("Sales", replace=True, yes=True, force=True), "t", False)
    assert [f.code for f in found] == ["sessions-closed"] and close


def test_single_user_and_rights() -> None:
    assert pf.single_user_reason(_facts(), None, "t") is None
    assert "single-user mode" in (pf.single_user_reason(_facts(single_user=True), None, "t") or "")
    restricted = DatabaseRow("Sales", 9, 0, 2, False, False)
    assert "RESTRICTED_USER" in (pf.single_user_reason(_facts(), restricted, "t") or "")
    weak = _facts(is_dbcreator=False, can_create_database=False)
    assert [f.code for f in pf.check_rights(weak, "t", None)] == ["missing-rights"]
    creator_only = _facts(is_dbcreator=False, can_create_database=True)
    assert pf.check_rights(creator_only, "t", None) == []
    assert [f.code for f in pf.check_rights(creator_only, "t", restricted)] == ["missing-rights"]
    assert [f.code for f in pf.check_server(_facts(product_version="10.50.6000.34"), "t", None)] == [
        "target-unsupported-version"
    ]


def test_log_statuses_on_corpus_headers(tmp_path: Path) -> None:
    root = corpus_root()
    if root is None:
        return
    store = LocalStore(root / "RestoreTimeClean")
    result = scan(store, [SqlServerEngine()])
    sets = result.sets_for("sqlserver")
    mine, others = split(sets, Identity("SQL2008", "RestoreTimeClean", None))
    assert others == [] and len(mine) == 8
    diff_end = 25000000019000001
    v = view(mine, others, {"RestoreTimeClean2_2.trn": "still copying"}, diff_end, frozenset(), frozenset())
    status = {row["name"]: row["status"] for row in v.details["backup_sets"]}
    assert status["RestoreTimeClean2_1.trn"] == "Queued"
    assert status["RestoreTimeClean2_2.trn"] == "Held"
    assert status["RestoreTimeClean2_3.trn"] == "Arrived"  # waits for the held one before it
    assert status["RestoreTimeClean_1.trn"] == "Skipped"
    assert [s.backup.files[0] for s in v.queue] == ["RestoreTimeClean2_1.trn"]
    assert v.source_lsn == 25000000022000001 and v.pending_bytes > 0
    assert held_files([]) == {}
