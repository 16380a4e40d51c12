"""The CLI against hostile names and paths: ids never become other URLs, file names and sources never reach
the terminal as escape sequences or markup, and unreadable or absurd paths are clear errors, not bugs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ferry.cli.main import app as cli_app
from ferry.cli.migrations import path as api_path
from ferry.core.migration import State
from ferry.service.contracts import MigrationRequest
from tests.unit.conftest import Server

pytestmark = pytest.mark.usefixtures("no_kept_token")

ESC = "\x1b"
HOSTILE = [
    "victim1/cancel?",
    "victim1?x=1",
    "victim1#",
    "../migrations",
    f"x{ESC}[2Jy",
    "a b",
    "%76ictim1",
    "",
]
VERBS = [("show",), ("cancel",), ("retry",), ("events",), ("cutover",), ("show", "--watch"), ("events", "-f")]


def test_path_segments_are_encoded_whole() -> None:
    assert api_path("migrations", "victim1/cancel?", "retry") == "/migrations/victim1%2Fcancel%3F/retry"
    assert api_path("migrations", f"x{ESC}#") == "/migrations/x%1B%23"


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_refuses_hostile_ids_and_touches_nothing(server: Server, verb: tuple[str, ...]) -> None:
    [victim] = server.store.create(
        [MigrationRequest("/b/victim", "t1", name=f"victim1-{verb[0]}{len(verb)}")]
    )
    server.store.set_state(victim.id, State.VALIDATING)
    server.store.set_state(victim.id, State.FAILED, error="boom")
    server.orch.calls.clear()
    for hostile in [h.replace("victim1", victim.name) for h in HOSTILE]:
        result = server.run(verb[0], hostile, *verb[1:])
        assert result.exit_code == 2, (hostile, result.output)
        assert "is not a migration id or name" in result.stderr and ESC not in result.output
    assert server.orch.calls == []
    record = server.store.get(victim.id)
    assert record is not None and record.state is State.FAILED and record.attempt == 1


def test_escape_sequences_in_file_names_are_shown_escaped(tmp_path: Path) -> None:
    (tmp_path / f"{ESC}[2Jx.bak").write_bytes(b"not a backup at all" * 10)
    (tmp_path / "[bold red]y.bak").write_bytes(b"nor this" * 10)
    (tmp_path / "z\x9b31m.trn").write_bytes(b"nor this" * 10)
    result = CliRunner().invoke(cli_app, ["scan", str(tmp_path)])
    assert result.exit_code in (0, 1), result.output
    assert ESC not in result.output and "\x9b" not in result.output
    assert (
        "\\x1b[2Jx.bak" in result.output
        and "[bold red]y.bak" in result.output
        and "\\x9b31m.trn" in result.output
    )
    as_json = CliRunner().invoke(cli_app, ["scan", str(tmp_path), "--json"])
    assert ESC not in as_json.stdout and "\x9b" not in as_json.stdout
    json.loads(as_json.stdout)


def test_a_source_with_escapes_and_markup_prints_safely(server: Server) -> None:
    source = f"/b/{ESC}]0;owned{ESC}\\[red]x[/red]\nforged line"
    [record] = server.store.create([MigrationRequest(source, "t1", name="escapes")])
    server.store.append_event(record.id, "error", f"cannot read {source}", {"command": f"cat {ESC}[2J"})
    for args in (("show", record.id), ("events", record.id), ("list",)):
        result = server.run(*args)
        assert result.exit_code == 0, result.output
        assert ESC not in result.output and "forged line" not in result.output.replace("\\nforged line", "")


def test_inspect_of_an_absurdly_long_path_is_a_clear_error(tmp_path: Path) -> None:
    long = tmp_path / ("a" * 5000) / "x.bak"
    result = CliRunner().invoke(cli_app, ["inspect", str(long)])
    assert result.exit_code == 2, result.output
    assert (
        "File name too long" in result.stderr and "hint:" in result.stderr and "internal" not in result.output
    )


def test_inspect_inside_an_unreadable_folder_is_a_clear_error(tmp_path: Path) -> None:
    """As an unprivileged user (root reads everything): a folder it may not enter."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the CLI as nobody")
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "x.bak").write_bytes(b"x" * 100)
    folder.chmod(0o000)
    tmp_path.chmod(0o755)
    tmp_path.parent.chmod(0o755)
    code = "import sys; from ferry.cli.main import app; sys.argv = ['ferry', 'inspect', sys.argv[1]]; app()"
    done = subprocess.run(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", sys.executable, "-c", code,
         str(folder / "x.bak")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    folder.chmod(0o755)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Permission denied" in done.stderr and "hint:" in done.stderr and "internal" not in done.stderr
