"""The REST API over real HTTP (FastAPI's TestClient, then a real uvicorn server for the CLI), on a real
SQLite state store and the real token files. The orchestrator is a recording implementation of Ferry's
Orchestrator protocol: the Temporal-backed one is tested by the integration tests.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ferry.cli.main import app as cli_app
from ferry.core.migration import MigrationStatus, State
from ferry.service.api import CutoverOut, EventList, MigrationList, MigrationOne
from ferry.service.auth import HASH_FILE, TokenVerifier, client_token, ensure_token, reset_token, save_token
from tests.unit.conftest import READY_PATH, Api, Server, _free_port, assert_error

pytestmark = pytest.mark.usefixtures("no_kept_token")


# -- auth -----------------------------------------------------------------------------------------------


PROTECTED = [
    ("GET", "/api/v1/migrations"),
    ("GET", "/api/v1/migrations/mig-aaaaaaaaaa"),
    ("GET", "/api/v1/migrations/mig-aaaaaaaaaa/events"),
    ("GET", "/api/v1/targets"),
    ("POST", "/api/v1/migrations"),
    ("POST", "/api/v1/migrations/cutover"),
    ("POST", "/api/v1/migrations/mig-aaaaaaaaaa/cancel"),
    ("POST", "/api/v1/migrations/mig-aaaaaaaaaa/retry"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_route_needs_the_token(api: Api, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {api.token}"}):
        resp = api.http.request(method, path, headers=headers, json={"source": "/b/x", "target": "t1"})
        error = assert_error(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"] == "Bearer" and "ferry serve" in error["hint"]
    assert api.store.find() == [] and api.orch.calls == []


def test_health_openapi_and_docs_are_open(api: Api) -> None:
    assert api.http.get("/api/v1/healthz").json()["status"] == "ok"
    assert api.http.get("/healthz").status_code == 200
    assert "swagger" in api.http.get("/docs").text.lower()
    doc = json.loads(api.http.get("/openapi.json").text)
    assert doc["openapi"].startswith("3.") and "/api/v1/migrations/cutover" in doc["paths"]
    create = doc["paths"]["/api/v1/migrations"]["post"]
    assert {"201", "400", "401", "409"} <= set(create["responses"]) and "422" not in create["responses"]
    assert create["security"] == [{"HTTPBearer": []}]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert (
        "ErrorResponse" in doc["components"]["schemas"]
        and "HTTPValidationError" not in doc["components"]["schemas"]
    )
    body = doc["components"]["schemas"]["CreateBody"]
    assert len(body["anyOf"]) == 3  # one object, a list, {"migrations": [...]}
    assert "security" not in doc["paths"]["/api/v1/healthz"]["get"]


def test_the_token_never_reaches_logs_or_answers(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [
        api.post("/migrations", {"source": "/b/db1", "target": "t1"}),
        api.get("/migrations"),
        api.post("/migrations/cutover", {"ids": ["db1"]}),
        api.http.get("/api/v1/migrations", headers={"Authorization": f"Bearer {api.token}x"}),
        api.http.get("/api/v1/migrations", headers={"Authorization": f"Basic {api.token}"}),
    ]
    api.orch.down = True
    answers.append(api.post("/migrations/db1/cancel"))
    assert caplog.records  # something was logged (the refused cancel at least)
    assert api.token not in caplog.text
    assert all(api.token not in a.text and api.token not in str(a.headers) for a in answers)


def test_token_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = ensure_token(tmp_path)
    assert token and ensure_token(tmp_path) is None  # shown once
    stored = (tmp_path / HASH_FILE).read_text()
    assert token not in stored and (tmp_path / HASH_FILE).stat().st_mode & 0o777 == 0o600
    check = TokenVerifier(tmp_path)
    assert check(token) and not check(token[:-1]) and not check("")
    new = reset_token(tmp_path)
    assert check(new) and not check(token)  # a running server sees the reset at once
    (tmp_path / HASH_FILE).unlink()
    assert not check(new)  # no hash, no entry
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert client_token(None, tmp_path) is None
    saved = save_token(new)
    assert saved == tmp_path / "config" / "ferry" / "token" and saved.stat().st_mode & 0o777 == 0o600
    assert client_token(None, tmp_path) == new and client_token(" given ", tmp_path) == "given"


# -- create -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"source": "/b/db1", "target": "t1"},
        [{"source": "/b/db1", "target": "t1"}],
        {"migrations": [{"source": "/b/db1", "target": "t1"}]},
    ],
)
def test_create_takes_one_object_a_list_or_a_batch(api: Api, body: Any) -> None:
    resp = api.post("/migrations", body)
    assert resp.status_code == 201
    [m] = MigrationList.model_validate(resp.json()).migrations
    assert (m.name, m.state, m.mode, m.target) == ("db1", State.QUEUED, "online", "t1")
    assert api.orch.calls == [("start", [m.id])]


def test_a_batch_is_created_and_started_in_one_call(api: Api) -> None:
    body = {
        "migrations": [{"source": f"/backups/db{i}", "target": "t1" if i % 2 else "t2"} for i in range(100)]
    }
    resp = api.post("/migrations", body)
    assert resp.status_code == 201 and len(resp.json()["migrations"]) == 100
    [(what, ids)] = api.orch.calls
    assert what == "start" and ids == [m["id"] for m in resp.json()["migrations"]]


def test_an_offline_migration_with_its_last_backup(api: Api) -> None:
    [m] = api.create("/b/db1", mode="offline", last_backup="db1_LOG_0042.trn", name="db1-final")
    assert (m["mode"], m["last_backup"], m["name"]) == ("offline", "db1_LOG_0042.trn", "db1-final")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([], "at least 1"),
        ({"migrations": []}, "at least 1"),
        ({"target": "t1"}, "source"),
        ({"source": "", "target": "t1"}, "source"),
        ({"source": "/b/x", "target": "t1", "mode": "sideways"}, "mode"),
        ({"source": "/b/x", "target": "t1", "last_backup": "x.trn"}, "last_backup"),
        ({"source": "/b/x", "target": "t1", "mode": "online", "last_backup": "x.trn"}, "offline"),
        ({"source": "/b/x", "target": "t1", "surce": "typo"}, "surce"),
        ({"source": "/b/x", "target": "t1", "name": "a b"}, "name"),
        ("just text", "list"),
        ([{"source": "/b/ok", "target": "t1"}, {"source": "/b/x", "target": "t1", "mode": "x"}], "[1].mode"),
    ],
)
def test_unusable_bodies_are_400_and_create_nothing(api: Api, body: Any, words: str) -> None:
    error = assert_error(api.post("/migrations", body), 400, "invalid_request")
    assert words in json.dumps(error) and "/docs" in error["hint"]
    assert api.store.find() == [] and api.orch.calls == []


def test_malformed_json_is_400(api: Api) -> None:
    resp = api.http.post(
        "/api/v1/migrations", content=b'{"source": ', headers={**api.auth, "Content-Type": "application/json"}
    )
    error = assert_error(resp, 400, "invalid_json")
    assert "Content-Type" in error["hint"]


def test_an_unknown_target_rejects_the_batch(api: Api) -> None:
    resp = api.post("/migrations", [{"source": "/b/a", "target": "t1"}, {"source": "/b/b", "target": "t9"}])
    error = assert_error(resp, 400, "unknown_target")
    assert "t9" in error["message"] and error["hint"] == "known targets: t1, t2"
    assert error["details"] == {"unknown": ["t9"], "known": ["t1", "t2"]}
    assert api.store.find() == []


def test_a_taken_name_is_409(api: Api) -> None:
    api.create("/b/a", name="sales")
    error = assert_error(
        api.post("/migrations", {"source": "/b/b", "target": "t1", "name": "sales"}), 409, "name_taken"
    )
    assert "sales" in error["message"] and error["details"] == {"names": ["sales"]}


def test_an_unreachable_orchestrator_fails_the_new_migrations_which_can_be_retried(api: Api) -> None:
    api.orch.down = True
    error = assert_error(
        api.post("/migrations", {"source": "/b/db1", "target": "t1"}), 503, "orchestrator_unavailable"
    )
    [mid] = error["details"]["ids"]
    record = api.store.get(mid)
    assert record is not None and record.state is State.FAILED and "unreachable" in (record.error or "")
    api.orch.down = False
    resp = api.post(f"/migrations/{mid}/retry")
    assert resp.status_code == 202 and resp.json()["migration"]["state"] == "Queued"
    assert api.orch.calls == [("retry", mid)]


# -- read -------------------------------------------------------------------------------------------------


def test_list_filters_by_state_and_target(api: Api) -> None:
    _, b, _ = api.create("/b/a", "/b/b", "/b/c")
    api.post("/migrations", {"source": "/b/d", "target": "t2"})
    api.advance(b["id"], State.VALIDATING)

    def names(query: str) -> list[str]:
        return [m["name"] for m in api.get(f"/migrations{query}").json()["migrations"]]

    assert names("") == ["a", "b", "c", "d"]
    assert names("?state=Queued") == ["a", "c", "d"]
    assert names("?state=Queued&target=t2") == ["d"]
    assert names("?target=t1&state=Validating") == ["b"]
    error = assert_error(api.get("/migrations?state=Bogus"), 400, "invalid_request")
    assert "ReadyForCutover" in error["message"] and error["details"][0]["location"] == "query.state"


def test_get_one_by_id_or_name_with_its_status_details(api: Api) -> None:
    [m] = api.create("/b/db1")
    api.advance(m["id"], State.VALIDATING, State.RESTORING_FULL, State.RESTORING_LOGS)
    status = MigrationStatus(
        State.RESTORING_LOGS,
        "restoring logs",
        source_position="0/5000000",
        target_position="0/3000000",
        lag_bytes=0x2000000,
        lag_seconds=42.5,
        pending_files=2,
        pending_bytes=33554432,
        current_file="000000010000000000000004",
        last_file="000000010000000000000003",
        blocked_reason=None,
        cutover_estimate_seconds=3.2,
        details={
            "full_backup_restored": True,
            "backup_sets": [
                {"name": "base", "kind": "full", "files": [{"name": "base.tar", "status": "restored"}]},
                {
                    "name": "wal",
                    "kind": "log",
                    "files": [
                        {"name": "000000010000000000000004", "status": "restoring"},
                        {
                            "name": "000000010000000000000003.partial",
                            "status": "skipped",
                            "reason": "partial segment",
                        },
                    ],
                },
            ],
        },
    ).to_json()
    api.store.set_status(m["id"], status)
    by_id, by_name = api.get(f"/migrations/{m['id']}"), api.get("/migrations/db1")
    assert by_id.status_code == 200 and by_id.json() == by_name.json()
    one = MigrationOne.model_validate(by_id.json()).migration
    assert one.status.pending_files == 2 and one.status.details is not None
    assert one.status.details.backup_sets[1].files[1].reason == "partial segment"
    assert by_id.json()["migration"]["status"] == status


def test_unknown_ids_and_routes_are_404_in_the_shape(api: Api) -> None:
    for path in ("/migrations/mig-aaaaaaaaaa", "/migrations/nope/events"):
        error = assert_error(api.get(path), 404, "not_found")
        assert "ferry migrations list" in error["hint"]
    assert "/api/v1" in assert_error(api.get("/nothing-here"), 404, "not_found")["hint"]
    assert_error(api.http.delete("/api/v1/migrations", headers=api.auth), 405, "method_not_allowed")
    assert_error(api.post("/migrations/mig-aaaaaaaaaa/cancel"), 404, "not_found")


def test_events_in_order_and_after_a_seq(api: Api) -> None:
    [m] = api.create("/b/db1")
    api.advance(m["id"], State.VALIDATING)
    api.store.append_event(m["id"], "step", "restored base.tar", {"command": "tar -x", "seconds": 2.5})
    page = EventList.model_validate(api.get(f"/migrations/{m['id']}/events").json())
    assert [(e.seq, e.kind) for e in page.events] == [(1, "state"), (2, "state"), (3, "step")]
    assert page.last_seq == 3 and page.events[2].data["command"] == "tar -x"
    later = api.get(f"/migrations/{m['id']}/events", params={"after": 2}).json()
    assert [e["seq"] for e in later["events"]] == [3]
    assert api.get(f"/migrations/{m['id']}/events", params={"after": 3}).json() == {
        "events": [],
        "last_seq": 3,
    }
    assert_error(api.get(f"/migrations/{m['id']}/events", params={"after": -1}), 400, "invalid_request")


def test_targets_are_listed_with_their_load(api: Api) -> None:
    [m, _] = api.create("/b/db1", "/b/db2")
    api.advance(m["id"], State.VALIDATING, State.RESTORING_FULL)
    assert api.get("/targets").json()["targets"][0] == {
        "name": "t1",
        "engine": "postgres",
        "host": "db-east-1",
        "description": "",
        "location": None,
        "concurrency": None,
        "agent": False,
        "running": 2,
        "restoring": 1,
        "facts": None,
    }


def test_a_bug_is_500_in_the_shape_without_its_details(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("password=hunter2 in some URL")

    monkeypatch.setattr(api.store, "find", broken)
    error = assert_error(api.get("/migrations"), 500, "internal")
    assert "hunter2" not in json.dumps(error) and "RuntimeError" in error["message"]


# -- cutover, cancel, retry -----------------------------------------------------------------------------


def test_cutover_of_a_migration_that_is_not_ready_is_409(api: Api) -> None:
    [m] = api.create("/b/db1")
    api.advance(m["id"], State.VALIDATING, State.RESTORING_FULL)
    error = assert_error(api.post("/migrations/cutover", {"ids": [m["id"]]}), 409, "wrong_state")
    assert "RestoringFull" in error["message"] and "full backup" in error["message"]
    assert error["details"]["rejected"][0]["id"] == m["id"]
    assert api.orch.calls == [("start", [m["id"]])]


def test_cutover_takes_ready_and_restoring_logs_and_says_what_it_refused(api: Api) -> None:
    ready, logs, full = api.create("/b/ready", "/b/logs", "/b/full")
    api.advance(ready["id"], *READY_PATH)
    api.advance(logs["id"], *READY_PATH[:3])
    api.advance(full["id"], *READY_PATH[:2])
    api.orch.calls.clear()
    body = {"ids": ["ready", logs["id"], full["id"]], "final_lsn": {"ready": "0/3000060"}}
    resp = api.post("/migrations/cutover", body)
    assert resp.status_code == 202
    answer = CutoverOut.model_validate(resp.json())
    assert [(a.name, a.final_lsn) for a in answer.accepted] == [("ready", "0/3000060"), ("logs", None)]
    assert [(r.name, r.code) for r in answer.rejected] == [("full", "wrong_state")]
    assert sorted(api.orch.calls) == sorted(
        [("cutover", (ready["id"], "0/3000060")), ("cutover", (logs["id"], None))]
    )
    [note] = [e for e in api.store.events(ready["id"]) if e.kind == "info"]
    assert note.message == "cutover requested" and note.data["final_lsn"] == "0/3000060"


def test_cutover_of_all_ready_takes_only_ready_ones(api: Api) -> None:
    a, b, _ = api.create("/b/a", "/b/b", "/b/c")
    api.advance(a["id"], *READY_PATH)
    api.advance(b["id"], *READY_PATH[:3])
    api.orch.calls.clear()
    resp = api.post("/migrations/cutover", {"all_ready": True})
    assert resp.status_code == 202 and [x["id"] for x in resp.json()["accepted"]] == [a["id"]]
    assert api.orch.calls == [("cutover", (a["id"], None))]
    api.advance(a["id"], State.CUTTING_OVER)
    assert api.post("/migrations/cutover", {"all_ready": True}).json() == {"accepted": [], "rejected": []}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "invalid_request"),
        ({"ids": ["a"], "all_ready": True}, 400, "invalid_request"),
        ({"ids": ["a", "mig-aaaaaaaaaa"]}, 404, "not_found"),
        ({"ids": ["a"], "final_lsn": {"a": "yesterday"}}, 400, "invalid_request"),
        ({"ids": ["a"], "final_lsn": {"b": "0/1"}}, 400, "invalid_request"),
        ({"id": "a"}, 400, "invalid_request"),
    ],
)
def test_unusable_cutover_requests_signal_nothing(api: Api, body: Any, status: int, code: str) -> None:
    [m] = api.create("/b/a")
    api.advance(m["id"], *READY_PATH)
    api.orch.calls.clear()
    assert_error(api.post("/migrations/cutover", body), status, code)
    assert api.orch.calls == []


def test_cancel_asks_the_workflow_and_refuses_when_too_late(api: Api) -> None:
    a, b, c = api.create("/b/a", "/b/b", "/b/c")
    resp = api.post(f"/migrations/{a['id']}/cancel")
    assert resp.status_code == 202 and resp.json()["migration"]["id"] == a["id"]
    assert api.orch.calls[-1] == ("cancel", a["id"])
    assert api.store.events(a["id"])[-1].message == "cancel requested"
    api.advance(b["id"], *READY_PATH, State.CUTTING_OVER)
    assert (
        "cutting over"
        in assert_error(api.post(f"/migrations/{b['id']}/cancel"), 409, "wrong_state")["message"]
    )
    api.advance(c["id"], State.CANCELED)
    assert "final" in assert_error(api.post("/migrations/c/cancel"), 409, "wrong_state")["message"]


def test_retry_is_for_failed_migrations_only(api: Api) -> None:
    a, b = api.create("/b/a", "/b/b")
    error = assert_error(api.post(f"/migrations/{a['id']}/retry"), 409, "wrong_state")
    assert "Queued" in error["message"] and error["details"] == {"state": "Queued"}
    api.store.set_state(b["id"], State.FAILED, error="boom")
    resp = api.post("/migrations/b/retry")
    assert resp.status_code == 202
    m = resp.json()["migration"]
    assert (m["state"], m["attempt"], m["error"]) == ("Queued", 2, None)
    assert api.orch.calls[-1] == ("retry", b["id"])


def test_a_retry_the_orchestrator_cannot_take_leaves_it_failed(api: Api) -> None:
    [m] = api.create("/b/a")
    api.store.set_state(m["id"], State.FAILED, error="boom")
    api.orch.down = True
    assert_error(api.post(f"/migrations/{m['id']}/retry"), 503, "orchestrator_unavailable")
    record = api.store.get(m["id"])
    assert record is not None and record.state is State.FAILED and "retry" in (record.error or "")


# -- the CLI against a real server ----------------------------------------------------------------------


def _created(result: Any) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout)["migrations"])


def test_cli_create_list_and_show(server: Server) -> None:
    result = server.run("create", "--no-scan", "/backups/cli/alpha", "/backups/cli/beta", "--target", "t2")
    assert result.exit_code == 0, result.output
    assert "alpha" in result.stdout and "beta" in result.stdout and "2 migration(s) created" in result.stdout
    listed = server.run("list", "--target", "t2", "--state", "queued")
    assert listed.exit_code == 0 and "alpha" in listed.stdout and "Queued" in listed.stdout
    as_json = json.loads(server.run("list", "--target", "t2", "--json").stdout)
    alpha = next(m for m in as_json["migrations"] if m["name"] == "alpha")
    server.advance(alpha["id"], State.VALIDATING, State.RESTORING_FULL, State.RESTORING_LOGS)
    server.store.set_status(
        alpha["id"],
        MigrationStatus(
            State.RESTORING_LOGS,
            "replaying WAL",
            pending_files=3,
            pending_bytes=50 << 20,
            lag_seconds=12.0,
            lag_bytes=3 << 24,
            current_file="00000001000000000000000A",
            last_file="000000010000000000000009",
            cutover_estimate_seconds=4.0,
            blocked_reason="segment 00000001000000000000000B is missing",
            details={
                "backup_sets": [
                    {
                        "name": "wal",
                        "kind": "log",
                        "files": [{"name": "00000001000000000000000C", "status": "arrived"}],
                    }
                ]
            },
        ).to_json(),
    )
    shown = server.run("show", "alpha")
    assert shown.exit_code == 0, shown.output
    for words in (
        "RestoringLogs",
        "00000001000000000000000A",
        "000000010000000000000009",
        "3 log backup(s)",
        "4.0 s",
        "is missing",
        "full backup restored  yes",
        "00000001000000000000000C",
        "arrived",
    ):
        assert words in shown.stdout, words
    assert (
        json.loads(server.run("show", alpha["id"], "--json").stdout)["migration"]["status"]["pending_files"]
        == 3
    )


def test_cli_refuses_unusable_input_with_exit_2(server: Server) -> None:
    result = server.run("create", "--no-scan", "/backups/cli/x", "--target", "nowhere")
    assert result.exit_code == 2 and "error: unknown target: nowhere" in result.stderr
    assert "hint: known targets: t1, t2" in result.stderr
    result = server.run("create", "--no-scan", "/backups/cli/x", "--target", "t1", "--last-backup", "x.trn")
    assert result.exit_code == 2 and "last_backup" in result.stderr
    assert server.run("create", "--no-scan", "/a", "/b", "--target", "t1", "--name", "n").exit_code == 2
    assert server.run("list", "--state", "sideways").exit_code == 2
    assert server.run("show", "mig-aaaaaaaaaa").exit_code == 2
    result = server.run("cutover", "a", "b", "--final-lsn", "0/1")
    assert result.exit_code == 2 and "one migration" in result.stderr


def test_cli_cutover_watch_and_events(server: Server) -> None:
    [m] = _created(server.run("create", "--no-scan", "/backups/cli/gamma", "--target", "t1", "--json"))
    refused = server.run("cutover", m["id"])
    assert (
        refused.exit_code == 1 and "a cutover is possible once its full backup is restored" in refused.stderr
    )
    server.advance(m["id"], *READY_PATH)
    done = server.run("cutover", "gamma", "--final-lsn", "0/3000060")
    assert done.exit_code == 0 and "cutover requested gamma" in done.stdout and "0/3000060" in done.stdout
    assert server.orch.calls[-1] == ("cutover", (m["id"], "0/3000060"))
    server.store.append_event(m["id"], "step", "promote", {"command": "pg_ctl promote", "seconds": 0.8})

    def finish() -> None:
        time.sleep(0.3)
        server.advance(m["id"], State.CUTTING_OVER, State.SUCCEEDED)

    threading.Thread(target=finish).start()
    watched = server.run("show", m["id"], "--watch", "--interval", "0.05")
    assert watched.exit_code == 0 and "Succeeded" in watched.stdout
    followed = server.run("events", "gamma", "--follow", "--interval", "0.05")
    assert followed.exit_code == 0
    for words in (
        "created in state Queued",
        "cutover requested",
        "pg_ctl promote",
        "CuttingOver -> Succeeded",
    ):
        assert words in followed.stdout, words
    lines = server.run("events", "gamma", "--follow", "--json", "--interval", "0.05").stdout.splitlines()
    assert [json.loads(x)["seq"] for x in lines] == list(range(1, len(lines) + 1))
    assert json.loads(server.run("events", "gamma", "--json", "--after", "7").stdout)["events"][0]["seq"] == 8


def test_cli_cutover_all_ready_cancel_and_retry(server: Server) -> None:
    a, b = _created(
        server.run("create", "--no-scan", "/backups/cli/delta", "/backups/cli/epsilon", "-t", "t1", "--json")
    )
    server.advance(a["id"], *READY_PATH)
    result = server.run("cutover", "--all-ready")
    assert result.exit_code == 0 and "delta" in result.stdout and "epsilon" not in result.stdout
    assert server.run("cutover").exit_code == 2
    result = server.run("cancel", "epsilon")
    assert result.exit_code == 0 and "cancel requested for epsilon" in result.stdout
    server.advance(b["id"], State.FAILED)
    result = server.run("retry", "epsilon", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["migration"]["attempt"] == 2
    result = server.run("retry", "epsilon")
    assert result.exit_code == 1 and "not Failed" in result.stderr


def test_cli_watch_of_a_failed_migration_exits_1(server: Server) -> None:
    [m] = _created(server.run("create", "--no-scan", "/backups/cli/zeta", "--target", "t1", "--json"))
    server.store.set_state(m["id"], State.FAILED, error="target disk full")
    result = server.run("show", m["id"], "--watch", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["migration"]["error"] == "target disk full"


def test_cli_auth_and_server_errors(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    result = server.run("list", token="")
    assert (
        result.exit_code == 2
        and "needs a bearer token" in result.stderr
        and "no token given" in result.stderr
    )
    result = server.run("list", token="wrong")
    assert result.exit_code == 2 and "not valid" in result.stderr

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(server.store, "find", broken)
    result = server.run("list")
    assert result.exit_code == 3 and "internal error" in result.stderr


def test_cli_without_a_server_exits_2() -> None:
    port = _free_port()
    result = CliRunner().invoke(
        cli_app, ["migrations", "list", "--api", f"http://127.0.0.1:{port}", "--token", "x"]
    )
    assert (
        result.exit_code == 2
        and "cannot reach the Ferry API" in result.stderr
        and "ferry serve" in result.stderr
    )


def test_cli_reads_a_saved_token(server: Server) -> None:
    save_token(server.token)
    result = server.run("list", token="")
    assert result.exit_code == 0, result.stderr


def test_the_token_is_not_in_the_server_logs(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.run("list")
    server.run("create", "--no-scan", "/backups/cli/eta", "--target", "t1")
    server.run("list", token=server.token + "x")
    assert any("GET /api/v1/migrations" in r.getMessage() for r in caplog.records)  # the access log is seen
    assert server.token not in caplog.text
