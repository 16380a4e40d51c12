"""The `ferry` command as a user runs it: output, the JSON contracts, exit codes and error messages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ferry.cli.main import app

pytestmark = pytest.mark.corpus
runner = CliRunner()


def ferry(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_plan_json_contract_on_the_whole_corpus(corpus: Path) -> None:
    code, out, _ = ferry("plan", str(corpus), "--json")
    assert code == 1  # db1 has no full backup: an error finding
    doc = json.loads(out)
    assert set(doc) >= {"databases", "findings", "version", "source"}
    for db in doc["databases"]:
        assert set(db) >= {"name", "server", "steps", "findings"}
        for step in db["steps"]:
            assert set(step) >= {"kind", "files", "first_lsn", "last_lsn", "stop_at"}
            assert step["kind"] in ("full", "diff", "log")
            assert step["first_lsn"].isdigit() and step["last_lsn"].isdigit()
            for f in step["files"]:
                assert not f.startswith("/") and (corpus / f).is_file()
        for f in db["findings"]:
            assert set(f) >= {"code", "severity", "message", "hint", "files"}
            assert f["severity"] in ("error", "warning", "info")
    stripe = next(d for d in doc["databases"] if d["name"] == "RestoreTimeStripe")
    assert len(stripe["steps"][0]["files"]) == 2


def test_plan_ok_exits_zero_and_prints_the_chain(corpus: Path) -> None:
    code, out, _ = ferry("plan", str(corpus / "RestoreTimeClean"))
    assert code == 0
    assert "RestoreTimeClean2_3.trn" in out and "ready" in out


def test_plan_one_database_and_a_point_in_time(corpus: Path) -> None:
    code, out, _ = ferry(
        "plan", str(corpus / "sql2008-backups"), "--database", "stopat", "--stop-at", "2020-05-12T13:31:00",
        "--json",
    )  # fmt: skip
    assert code == 0
    [db] = json.loads(out)["databases"]
    assert db["name"] == "StopAt"
    assert db["steps"][-1]["stop_at"] == "2020-05-12T13:31:00+01:00"


def test_unknown_database_lists_what_is_there(corpus: Path) -> None:
    code, _, err = ferry("plan", str(corpus / "RestoreTimeClean"), "--database", "nosuch")
    assert code == 2
    assert "'nosuch'" in err and "RestoreTimeClean" in err and "hint:" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--stop-at", "yesterday"], "--stop-at 'yesterday'"),
        (["--stop-at-lsn", "12:ab"], "12:ab"),
        (["--stop-at", "2020-01-01T00:00:00", "--stop-at-lsn", "1"], "exclude"),
    ],
)
def test_bad_options_exit_2_with_a_hint(corpus: Path, args: list[str], needle: str) -> None:
    code, _, err = ferry("plan", str(corpus / "RestoreTimeClean"), *args)
    assert code == 2
    assert needle in err and "hint:" in err


def test_missing_path(tmp_path: Path) -> None:
    code, _, err = ferry("scan", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in err and "hint:" in err


def test_scan_json(corpus: Path) -> None:
    code, out, _ = ferry("scan", str(corpus / "sql2008-backups"), "--json")
    assert code == 0
    doc = json.loads(out)
    db1 = next(d for d in doc["databases"] if d["name"] == "db1")
    assert db1["restorable_to"] is None and db1["counts"] == {"diff": 2, "log": 2}
    stop = next(d for d in doc["databases"] if d["name"] == "StopAt")
    assert stop["restorable_to_lsn"] == "19000000024600001"


def test_scan_human(corpus: Path) -> None:
    code, out, _ = ferry("scan", str(corpus / "sql2008-backups"))
    assert code == 0
    assert "StopAt" in out and "no full backup" in out


def test_inspect_json_has_headeronly_and_filelistonly(corpus: Path) -> None:
    path = corpus / "sql2008-backups" / "db1" / "DIFF" / "SQL2008_db1_DIFF_20170518_041819.bak"
    code, out, _ = ferry("inspect", str(path), "--json")
    assert code == 0
    [row] = json.loads(out)
    assert row["path"] == str(path)
    assert row["DatabaseName"] == "db1" and row["BackupType"] == 5
    assert row["BackupTypeDescription"] == "Database Differential"
    for col in ("FirstLSN", "LastLSN", "CheckpointLSN", "DatabaseBackupLSN", "DifferentialBaseLSN",
                "DifferentialBaseGUID", "BackupSetGUID", "BackupStartDate", "BackupFinishDate",
                "SoftwareVersionMajor", "DatabaseVersion", "RecoveryModel", "FamilyCount", "MediaSetId",
                "FamilyGUID", "RecoveryForkID", "HasMediaPassword", "IsCopyOnly", "MachineName"):  # fmt: skip
        assert col in row
    assert row["IsCopyOnly"] is None  # unknown, never guessed
    assert sorted(f["Type"] for f in row["files"]) == ["D", "D", "L"]
    assert {"LogicalName", "PhysicalName", "FileGroupName", "Size", "MaxSize", "FileId", "CreateLSN",
            "DifferentialBaseLSN"} <= set(row["files"][0])  # fmt: skip


def test_inspect_compressed_and_human(corpus: Path) -> None:
    path = corpus / "more" / "compressed-striped-2016" / "multiFilesBackup2.bak"
    code, out, _ = ferry("inspect", str(path))
    assert code == 0
    assert "CakeRestoreTest" in out and "Compressed" in out


def test_inspect_bad_files(corpus: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    cut = tmp_path / "cut.bak"
    cut.write_bytes((corpus / "singlerestore" / "singlerestore.bak").read_bytes()[:5000])
    code, _, err = ferry("inspect", str(text), str(cut))
    assert code == 2
    assert "notes.txt" in err and str(cut) in err and "at byte" in err and "hint:" in err


def test_console_script_runs(corpus: Path, tmp_path: Path) -> None:
    """The installed `ferry` command, as a user runs it: one file given directly works like a folder."""
    shutil.copy(corpus / "singlerestore" / "singlerestore.bak", tmp_path / "one.bak")
    exe = Path(sys.executable).with_name("ferry")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ferry.cli.main"]
    done = subprocess.run(
        [*cmd, "plan", str(tmp_path / "one.bak"), "--json"], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["databases"][0]["steps"][0]["files"] == ["one.bak"]
