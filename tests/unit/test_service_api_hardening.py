"""The API against a hostile or careless caller: the token before the body, capped bodies, no 5xx from odd
input, a schema that agrees with the validation, one winner among racing retries, bounded answers and
queries for huge cutovers, and no secret in anything it returns. Real SQLite store and token files."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import sqlalchemy as sa

from ferry.core.migration import State
from ferry.service.api.guard import Guard
from ferry.service.auth import TokenVerifier, ensure_token
from ferry.service.contracts import MigrationRequest
from ferry.service.store import StateConflict
from tests.unit.conftest import READY_PATH, Api, Server, assert_error

pytestmark = pytest.mark.usefixtures("no_kept_token")

SECRET = "S3cretPass"


# -- item 4: the token before the body, and a cap on bodies ------------------------------------------------


def test_no_token_is_401_before_the_body_is_read(api: Api) -> None:
    resp = api.http.post(
        "/api/v1/migrations", content=b'{"source": ', headers={"Content-Type": "application/json"}
    )
    assert_error(resp, 401, "unauthorized")
    for path in ("/api/v1/nowhere", "/api/v1/migrations/x/delete", "/anything"):
        assert_error(api.http.post(path, content=b"[}"), 401, "unauthorized")


def test_the_guard_never_reads_a_body_without_the_token(tmp_path: Path) -> None:
    """At the ASGI level: a 100 MB upload without the token is answered without one `receive`."""
    import asyncio

    ensure_token(tmp_path)
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append("app")

    async def receive() -> dict[str, Any]:
        reached.append("receive")
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = Guard(app, TokenVerifier(tmp_path))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/migrations",
        "headers": [(b"content-length", str(100 * 1024 * 1024).encode()), (b"authorization", b"Bearer no")],
    }
    asyncio.run(guard(scope, receive, send))
    assert reached == [] and sent[0]["status"] == 401


def test_bodies_are_capped_with_413(api: Api) -> None:
    big = json.dumps({"source": "/b/" + "x" * (3 * 1024 * 1024), "target": "t1"}).encode()
    resp = api.http.post(
        "/api/v1/migrations", content=big, headers={**api.auth, "Content-Type": "application/json"}
    )
    error = assert_error(resp, 413, "too_large")
    assert "MiB" in error["message"]

    def chunks() -> Any:  # no Content-Length: the limit holds for a chunked body too
        for _ in range(40):
            yield b"x" * 100_000

    resp = api.http.post("/api/v1/migrations", content=chunks(), headers=api.auth)
    assert_error(resp, 413, "too_large")
    assert api.store.find() == [] and api.orch.calls == []


# -- item 3: no 500 from odd input, and a schema that says what the API takes -------------------------------


def test_an_after_beyond_any_seq_is_400_not_500(api: Api) -> None:
    [m] = api.create("/b/a")
    error = assert_error(
        api.get(f"/migrations/{m['id']}/events", params={"after": 2**63}), 400, "invalid_request"
    )
    assert "after" in error["message"]
    assert api.get(f"/migrations/{m['id']}/events", params={"after": 2**63 - 1}).json()["events"] == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"ids": ["\\ud800"]}',
        b'{"ids": ["a"], "final_lsn": {"a": "\\udfff"}}',
        b'{"ids": ["a"], "final_lsn": {"\\ud800": "0/1"}}',
        b'{"source": "/b/\\ud800x", "target": "t1"}',
        b'{"source": "/b/x\\u0000y", "target": "t1"}',
    ],
)
def test_lone_surrogates_and_nul_are_400_not_500(api: Api, raw: bytes) -> None:
    [m] = api.create("/b/a")
    api.advance(m["id"], *READY_PATH)
    api.orch.calls.clear()
    path = "/api/v1/migrations" if b"source" in raw else "/api/v1/migrations/cutover"
    resp = api.http.post(path, content=raw, headers={**api.auth, "Content-Type": "application/json"})
    assert_error(resp, 400, "invalid_request")
    assert api.orch.calls == [] and len(api.store.find()) == 1


def _validator(doc: dict[str, Any], name: str) -> Any:
    """A validator of the document's schema `name` (its references resolved within the document)."""
    return jsonschema_rs.Draft202012Validator({"$ref": f"#/components/schemas/{name}", **doc})


@pytest.mark.parametrize(
    ("model", "body"),
    [
        ("MigrationIn", {"source": "/b/x", "target": "t1", "last_backup": "x.trn"}),
        ("MigrationIn", {"source": "/b/x", "target": "t1", "mode": "online", "last_backup": "x.trn"}),
        ("MigrationIn", {"source": "/b/x", "target": "pg-east-1"}),
        ("CutoverIn", {"ids": []}),
        ("CutoverIn", {}),
        ("CutoverIn", {"ids": ["a"], "all_ready": True}),
        ("CutoverIn", {"ids": ["a"], "final_lsn": {"a": "yesterday"}}),
    ],
)
def test_the_schema_refuses_what_the_api_refuses(api: Api, model: str, body: dict[str, Any]) -> None:
    doc = api.http.get("/openapi.json").json()
    assert not _validator(doc, model).is_valid(body)
    path = "/migrations" if model == "MigrationIn" else "/migrations/cutover"
    assert api.post(path, body).status_code == 400


def test_the_schema_takes_what_the_api_takes_and_its_examples_work(api: Api) -> None:
    doc = api.http.get("/openapi.json").json()
    migration = doc["components"]["schemas"]["MigrationIn"]
    assert migration["properties"]["target"]["enum"] == ["t1", "t2"]
    for example in migration["examples"]:
        assert _validator(doc, "MigrationIn").is_valid(example)
        assert api.post("/migrations", example).status_code == 201
    for body in (
        {"source": "/b/y", "target": "t2", "mode": "offline", "last_backup": "x"},
        {"source": "/b/z", "target": "t1"},
    ):
        assert _validator(doc, "MigrationIn").is_valid(body)
    for body in ({"ids": ["a"]}, {"all_ready": True}, {"ids": ["a"], "final_lsn": {"a": "0/3000060"}}):
        assert _validator(doc, "CutoverIn").is_valid(body)


# -- item 7: concurrent retries ----------------------------------------------------------------------------


def test_the_store_moves_a_state_by_compare_and_set(api: Api) -> None:
    [m] = api.create("/b/a")
    api.store.set_state(m["id"], State.FAILED, error="the real error")
    api.store.set_state(m["id"], State.QUEUED, expected=State.FAILED)
    with pytest.raises(StateConflict):
        api.store.set_state(m["id"], State.QUEUED, expected=State.FAILED)


def test_of_ten_retries_at_once_one_wins(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}) as http:
        [m] = http.post("/api/v1/migrations", json={"source": "/b/race", "target": "t1"}).json()["migrations"]
        server.store.set_state(m["id"], State.FAILED, error="the real error")
        server.orch.calls.clear()
        start = threading.Barrier(10)

        def retry(_: int) -> int:
            start.wait()
            return http.post(f"/api/v1/migrations/{m['id']}/retry").status_code

        with ThreadPoolExecutor(10) as pool:
            codes = sorted(pool.map(retry, range(10)))
    assert codes == [202] + [409] * 9
    assert [c for c in server.orch.calls if c[0] == "retry"] == [("retry", m["id"])]
    record = server.store.get(m["id"])
    assert record is not None and record.attempt == 2
    errors = [e.data.get("error") for e in server.store.events(m["id"]) if e.kind == "state"]
    assert "the real error" in errors


# -- item 10: a cutover of 10,000 ids ------------------------------------------------------------------------


def test_a_cutover_of_ten_thousand_unknown_ids_is_one_query_and_a_small_answer(api: Api) -> None:
    queries: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            queries.append(statement)

    engine = api.store._reader
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        ids = [f"nobody-{i}" for i in range(10_000)]
        started = time.perf_counter()
        resp = api.post("/migrations/cutover", {"ids": ids})
        elapsed = time.perf_counter() - started
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    error = assert_error(resp, 404, "not_found")
    assert len(resp.content) < 10_000 and error["details"]["unknown_count"] == 10_000
    assert "9995 more" in error["message"]
    assert len(queries) == 1 and elapsed < 3, (len(queries), elapsed)


def test_a_cutover_of_many_known_ids_signals_each_and_records_in_one_go(api: Api) -> None:
    made = api.create(*(f"/b/m{i}" for i in range(300)))
    for m in made:
        api.advance(m["id"], *READY_PATH)
    api.orch.calls.clear()
    resp = api.post("/migrations/cutover", {"ids": [m["name"] for m in made]})
    assert resp.status_code == 202 and len(resp.json()["accepted"]) == 300
    assert sorted(c[1][0] for c in api.orch.calls) == sorted(m["id"] for m in made)
    assert all(api.store.events(m["id"])[-1].message == "cutover requested" for m in made)


# -- item 2: sources whose scheme is unreadable, and secrets -------------------------------------------------


@pytest.mark.parametrize(
    "source", [f"ftp://user:{SECRET}@h/x", "gopher://[::1/x", f"file://user:{SECRET}@elsewhere/x"]
)
def test_a_source_this_build_cannot_read_is_refused_at_creation(api: Api, source: str) -> None:
    resp = api.post("/migrations", [{"source": "/b/ok", "target": "t1"}, {"source": source, "target": "t1"}])
    error = assert_error(resp, 400, "unsupported_source")
    assert "[1]" in error["message"] and SECRET not in resp.text
    assert api.store.find() == [] and api.orch.calls == []


def test_no_secret_leaves_the_api(api: Api) -> None:
    """A record holding a secret (created past the API's checks, as an older Ferry did): its source, its
    error, its status and its events are shown masked, and the store wrote none of them but the source."""
    [record] = api.store.create([MigrationRequest(f"smb://user:{SECRET}@host/share/x", "t1")])
    where = f"smb://user:{SECRET}@host/share/x/base.tar?sig={SECRET}"
    api.store.set_state(
        record.id, State.FAILED, {"blocked_reason": f"waiting in {where}"}, f"cannot read {where}"
    )
    api.store.append_event(record.id, "error", f"validate failed: {where}", {"where": where})
    answers = [
        api.get(f"/migrations/{record.id}"),
        api.get("/migrations"),
        api.get(f"/migrations/{record.id}/events"),
    ]
    answers.append(api.post("/migrations/cutover", {"ids": [record.id]}))
    for resp in answers:
        assert resp.status_code < 500 and SECRET not in resp.text, resp.text
    shown = answers[0].json()["migration"]
    assert shown["source"] == "smb://user:***@host/share/x" and "sig=***" in shown["error"]
    with api.store._reader.connect() as conn:
        rows = [str(r) for r in conn.execute(sa.text("SELECT error, status FROM migrations"))]
        rows += [str(r) for r in conn.execute(sa.text("SELECT message, data FROM events"))]
    assert SECRET not in "".join(rows)


def test_a_default_name_never_carries_a_password(api: Api) -> None:
    [record] = api.store.create([MigrationRequest(f"file://user:{SECRET}@localhost", "t1")])
    assert SECRET not in record.name


def test_the_cli_shows_no_secret(server: Server) -> None:
    [record] = server.store.create([MigrationRequest(f"smb://user:{SECRET}@host/share/y", "t1")])
    server.store.set_state(record.id, State.FAILED, error=f"cannot read smb://user:{SECRET}@host/share/y")
    for args in (("show", record.id), ("events", record.id), ("list",), ("show", record.id, "--json")):
        result = server.run(*args)
        assert result.exit_code == 0, result.output
        assert SECRET not in result.output and ("***" in result.output or args == ("list",))


@pytest.mark.parametrize(("token", "status"), [(False, b"401"), (True, b"413")])
def test_a_huge_upload_is_answered_before_it_is_sent(server: Server, token: bool, status: bytes) -> None:
    """Over a real socket: the headers of a 100 MB POST, and not one byte of its body, get their answer."""
    host, port = server.url.removeprefix("http://").split(":")
    auth = f"Authorization: Bearer {server.token}\r\n" if token else ""
    head = (
        "POST /api/v1/migrations HTTP/1.1\r\nHost: ferry\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {100 * 1024 * 1024}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(65536)
    assert answer.split(b" ")[1] == status, answer[:200]


def test_cancel_of_a_migration_whose_workflow_ended_is_a_state_answer(api: Api) -> None:
    """The workflow ended between the state read and the signal (or without recording it): 409 with the
    state, not a 503 that blames the orchestrator."""
    (m,) = api.create("/b/ended")
    api.orch.ended.add(m["id"])
    error = assert_error(
        api.post(f"/migrations/{m['id']}/cancel", params={"drop": "true"}), 409, "wrong_state"
    )
    assert "has ended" in error["message"] and error["details"] == {"state": "Queued"}
    assert_error(api.post(f"/migrations/{m['id']}/cancel", params={"drop": "maybe"}), 400, "invalid_request")
