"""`ferry script` on the real backups: the T-SQL contract, checked against the plan and the headers.

Every statement is tokenized with sqlglot's T-SQL dialect (it parses RESTORE only as a command), which
checks that brackets and quotes balance and gives back identifiers and literals unquoted, so the names and
paths can be compared with what the plan and the headers say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlglot.dialects.tsql import TSQL
from typer.testing import CliRunner

from ferry.cli.main import app
from tests.corpus.helpers import all_sets

pytestmark = pytest.mark.corpus
runner = CliRunner()


def ferry(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@dataclass
class Statement:
    comments: list[str]
    sql: str
    tokens: list[tuple[str, str]]

    @property
    def verb(self) -> str:
        return self.tokens[1][1].upper()

    @property
    def database(self) -> str:
        kind, name = self.tokens[2]
        assert kind == "IDENTIFIER"
        return name

    @property
    def devices(self) -> list[tuple[str, str]]:
        """(DISK or URL, path) between FROM and WITH."""
        words = self.tokens
        start = next(i for i, t in enumerate(words) if t[0] == "FROM")
        end = next(i for i, t in enumerate(words) if t[0] == "WITH")
        part = words[start + 1 : end]
        out = []
        for i in range(0, len(part), 4):  # DEVICE = N'...' [,]
            assert part[i][0] == "VAR" and part[i + 1][0] == "EQ" and part[i + 2][0] == "NATIONAL_STRING"
            out.append((part[i][1].upper(), part[i + 2][1]))
        return out

    @property
    def options(self) -> list[list[tuple[str, str]]]:
        words = self.tokens[next(i for i, t in enumerate(self.tokens) if t[0] == "WITH") + 1 :]
        groups: list[list[tuple[str, str]]] = [[]]
        for t in words:
            if t[0] == "COMMA":
                groups.append([])
            else:
                groups[-1].append(t)
        return groups

    def option_names(self) -> list[str]:
        return [g[0][1].upper() for g in self.options]

    @property
    def moves(self) -> dict[str, str]:
        return {g[1][1]: g[3][1] for g in self.options if g[0][1].upper() == "MOVE"}


def statements(out: str) -> list[Statement]:
    lines = out.split("\n")
    assert lines[-2:] == ["GO", ""], "the script ends with a GO line"
    batches: list[list[str]] = [[]]
    for line in lines[:-1]:
        if line == "GO":
            batches.append([])
        else:
            assert line.strip().upper() != "GO"
            batches[-1].append(line)
    assert batches[-1] == []
    result = []
    for batch in batches[:-1]:
        comments = [line for line in batch if line.startswith("-- ")]
        body = [line for line in batch if not line.startswith("-- ")]
        assert batch[: len(comments)] == comments, "comments come first"
        sql = "\n".join(body)
        result.append(Statement(comments, sql, [(t.token_type.name, t.text) for t in TSQL().tokenize(sql)]))
    return result


def plan_json(*args: str) -> dict[str, object]:
    _, out, _ = ferry("plan", *args, "--json")
    return json.loads(out)  # type: ignore[no-any-return]


def test_whole_corpus_script_matches_the_plan(corpus: Path) -> None:
    code, out, err = ferry("script", str(corpus))
    assert code == 1  # db1 and the 2016 RestoreTimeClean have no full backup
    assert "no-full-backup" in err and "RESTORE" not in err
    plan = plan_json(str(corpus))
    ready = [d for d in plan["databases"] if d["executable"]]  # type: ignore[attr-defined,index]
    stmts = statements(out)
    assert len(stmts) == sum(len(d["steps"]) + 1 for d in ready)
    files_by_path = {s.path: s for s in all_sets()}
    it = iter(stmts)
    for db in ready:
        for step in db["steps"]:
            st = next(it)
            kind = step["kind"]
            assert st.verb == ("LOG" if kind == "log" else "DATABASE")
            assert st.database == db["name"]
            # The comment line right before the statement names the backup.
            assert st.comments[-1].startswith(f"-- {kind} backup '{step['files'][0]}'")
            assert f"LSN {step['first_lsn']} to {step['last_lsn']}" in st.comments[-1]
            assert f"finished {step['backup_finish']}" in st.comments[-1]
            assert st.devices == [("DISK", str(corpus / f)) for f in step["files"]]
            head = files_by_path[str(Path(step["files"][0]))]
            names = st.option_names()
            assert names[-2:] == ["NORECOVERY", "STATS"]
            assert ("CHECKSUM" in names) is bool(head.flags & 0x10)
            assert "STOPAT" not in names and "STOPATMARK" not in names
            if kind != "log":
                # MOVE for every logical file, to its original path.
                assert st.moves == {f.logical_name: f.physical_name for f in head.files}
        recovery = next(it)
        assert recovery.sql == f"RESTORE DATABASE {_bracket(db['name'])} WITH RECOVERY"
        assert recovery.database == db["name"]
    assert "from server 'WIN-JNMR8KM0U3B\\SQL2016'" not in out


def _bracket(name: str) -> str:
    return "[" + name.replace("]", "]]") + "]"


def test_online_leaves_every_database_restoring(corpus: Path) -> None:
    code, out, _ = ferry("script", str(corpus / "sql2008-backups"), "--online")
    assert code == 1
    stmts = statements(out)
    assert stmts and all(s.option_names()[-2:] == ["NORECOVERY", "STATS"] for s in stmts)
    assert "WITH RECOVERY" not in out


def test_stop_at_lsn_on_the_last_log(corpus: Path) -> None:
    code, out, err = ferry("script", str(corpus / "sql2008-backups" / "StopAt"), "--stop-at-lsn", "19:200:1")
    assert code == 0 and err == ""
    stmts = statements(out)
    assert [s.verb for s in stmts] == ["DATABASE", "LOG", "LOG", "LOG", "DATABASE"]
    assert stmts[3].options[0] == [
        ("VAR", "STOPATMARK"),
        ("EQ", "="),
        ("NATIONAL_STRING", "lsn:19000000020000001"),
    ]
    assert (
        "StopAt_21.trn" in stmts[3].comments[-1] and "stop at lsn:19000000020000001" in stmts[3].comments[-1]
    )
    assert all("STOPATMARK" not in s.option_names() for s in stmts[:3])


def test_stop_at_time(corpus: Path) -> None:
    code, out, _ = ferry(
        "script", str(corpus / "sql2008-backups" / "StopAt"), "--stop-at", "2020-05-12T13:31:00"
    )
    assert code == 0
    last_log = statements(out)[-2]
    assert last_log.options[0][-1] == ("NATIONAL_STRING", "2020-05-12T13:31:00")


def test_unreachable_point_gets_no_restore(corpus: Path) -> None:
    code, out, err = ferry(
        "script", str(corpus / "sql2008-backups" / "StopAt"), "--stop-at", "2020-05-12T09:00:00"
    )
    assert code == 1 and out == ""
    assert "stop-at-unreachable" in err


def test_data_and_log_dirs_give_unique_files(corpus: Path) -> None:
    code, out, _ = ferry(
        "script", str(corpus), "--data-dir", r"D:\SQL Data", "--log-dir", "/var/opt/mssql/log"
    )
    assert code == 1
    per_database: list[set[str]] = []
    for s in statements(out):
        if s.comments[0].startswith("-- database "):
            per_database.append(set())
        for path in s.moves.values():
            assert path.startswith((r"D:\SQL Data" + "\\", "/var/opt/mssql/log/"))
            per_database[-1].add(path.casefold())
    everything = [p for paths in per_database for p in paths]
    assert len(per_database) == 26 and len(everything) == len(set(everything))


def test_backup_paths_as_the_target_sees_them(corpus: Path) -> None:
    folder = corpus / "sql2008-backups" / "RestoreTimeStripe"
    code, out, _ = ferry(
        "script",
        str(folder),
        "--backup-path-as",
        f"{folder}=https://acct.blob.core.windows.net/bak",
        "--target-version",
        "16",
    )
    assert code == 0
    cred, full = statements(out)[:2]
    # The credential comes first, its secret a sqlcmd variable set by a commented :setvar line.
    assert (
        cred.comments[0]
        == "-- credential [https://acct.blob.core.windows.net/bak]: the target's restores read through it"
    )
    assert cred.comments[1].startswith('-- :setvar FERRY_SAS "<SAS token')
    assert (
        "CREATE CREDENTIAL [https://acct.blob.core.windows.net/bak] WITH IDENTITY = N'SHARED ACCESS "
        in cred.sql
    )
    assert "SECRET = N'$(FERRY_SAS)'" in cred.sql and "CREDENTIAL =" not in full.sql
    assert full.devices == [
        ("URL", "https://acct.blob.core.windows.net/bak/Stripe1/RestoreTimeStripe2.bak"),
        ("URL", "https://acct.blob.core.windows.net/bak/Stripe2/RestoreTimeStripe2a.bak"),
    ]
    code, out, _ = ferry("script", str(folder), "--backup-path-as", f"{folder}=\\\\fs\\bak")
    assert statements(out)[0].devices[0] == ("DISK", "\\\\fs\\bak\\Stripe1\\RestoreTimeStripe2.bak")


def test_target_version_refuses_newer_backups(corpus: Path) -> None:
    code, out, err = ferry("script", str(corpus / "more" / "sql2019"), "--target-version", "14")
    assert code == 1 and out == ""
    assert err.count("target-version-too-old") == 3
    code, _, err = ferry("script", str(corpus / "more" / "sql2019"), "--target-version", "10")
    assert code == 2 and "2008" in err


def test_bad_backup_path_mapping_is_a_usage_error(corpus: Path) -> None:
    code, out, err = ferry("script", str(corpus / "singlerestore"), "--backup-path-as", "nothing")
    assert code == 2 and out == "" and "LOCAL=TARGET" in err


def test_options_sql_server_refuses_give_no_restore(corpus: Path) -> None:
    code, out, err = ferry("script", str(corpus / "singlerestore"), "--credential", "blob key")
    assert code == 1 and out == ""
    assert err.count("not-scriptable") == 2 and "URL" in err
