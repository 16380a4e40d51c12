"""The web console over HTTP (FastAPI's TestClient, no browser): its gate (sessions, CSRF, bodies), that it
acts only through the API, and what its pages show. The browser tests (tests/integration/test_web_*.py)
drive it in Chromium against a real `ferry serve`."""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.core.migration import State
from ferry.service.api import create_app
from ferry.service.api.common import TargetInfo
from ferry.service.auth import TokenVerifier, ensure_token, reset_token
from ferry.service.scans import ScanJobs, ScanRequest
from ferry.service.store import SqlStateStore
from tests.unit.conftest import READY_PATH, TARGETS, RecordingOrchestrator

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


class Browser:
    """A TestClient that signs in like the login form does, and finds the page's CSRF token."""

    def __init__(
        self, http: TestClient, store: SqlStateStore, orch: RecordingOrchestrator, folder: Path, token: str
    ):
        self.http, self.store, self.orch, self.folder, self.token = http, store, orch, folder, token

    def login(self, token: str | None = None) -> Any:
        form = self.http.get("/console/login")
        nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
        assert nonce, form.text
        return self.http.post(
            "/console/login", data={"token": token or self.token, "nonce": nonce.group(1), "next": "/"}
        )

    def csrf(self) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.http.get("/").text)
        assert found
        return found.group(1)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        auth = {"Authorization": f"Bearer {self.token}"}
        return self.http.request(method, f"/api/v1{path}", json=body, headers=auth)

    def create(self, *items: dict[str, Any]) -> list[dict[str, Any]]:
        resp = self.api("POST", "/migrations", {"migrations": list(items)})
        assert resp.status_code == 201, resp.text
        return list(resp.json()["migrations"])


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    yield from scanning_browser(tmp_path, ScanJobs())


# -- the gate ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/console/migrations", "/console/migrations/mig-aaaaaaaaaa", "/console/new"]
)
def test_pages_send_a_stranger_to_the_login(browser: Browser, path: str) -> None:
    resp = browser.http.get(path)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/console/login?next=")
    live = browser.http.get("/console/parts/dashboard", headers={"HX-Request": "true"})
    assert live.status_code == 401 and live.headers["HX-Redirect"].startswith("/console/login")


@pytest.mark.parametrize(
    "path", ["/console/cutover", "/console/cancel", "/console/new/start", "/console/logout"]
)
def test_actions_without_a_session_are_401_and_change_nothing(browser: Browser, path: str) -> None:
    (m,) = browser.create({"source": "/b/db1", "target": "t1"})
    resp = browser.http.post(path, data={"ids": m["id"]})
    assert resp.status_code == 401
    assert browser.orch.calls == [("start", [m["id"]])]


def test_the_gate_refuses_before_reading_the_body(browser: Browser) -> None:
    """At the ASGI level: a POST without a session is answered without one `receive`."""
    reached: list[str] = []

    async def receive() -> dict[str, Any]:
        reached.append("receive")
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/console/cutover",
        "headers": [
            (b"content-length", str(100 * 1024 * 1024).encode()),
            (b"cookie", b"ferry_session=forged"),
        ],
        "query_string": b"",
    }
    asyncio.run(browser.http.app(scope, receive, send))  # type: ignore[arg-type]
    assert reached == [] and sent[0]["status"] == 401


def test_a_wrong_token_is_refused_and_the_right_one_gives_an_httponly_cookie(browser: Browser) -> None:
    wrong = browser.login("not-the-token")
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert "ferry_session" not in wrong.headers.get("set-cookie", "")
    ok = browser.login()
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    (session,) = [c for c in ok.headers.get_list("set-cookie") if c.startswith("ferry_session=")]
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/" in session
    page = browser.http.get("/")
    assert page.status_code == 200 and "Dashboard" in page.text
    assert browser.token not in page.text and browser.token not in session  # the token stays on the server


def test_the_login_form_is_tied_to_its_browser(browser: Browser) -> None:
    resp = browser.http.post("/console/login", data={"token": browser.token, "nonce": "made-up", "next": "/"})
    assert resp.status_code == 401 and "ferry_session" not in resp.headers.get("set-cookie", "")


def test_the_session_cookie_opens_the_console_not_the_api(browser: Browser) -> None:
    browser.login()
    assert browser.http.get("/api/v1/migrations").status_code == 401
    assert browser.http.get("/anything").status_code == 401  # the API's default stays: refused


def test_state_changes_need_the_csrf_token_and_the_console_origin(browser: Browser) -> None:
    (m,) = browser.create({"source": "/b/db1", "target": "t1"})
    browser.store.set_state(m["id"], State.VALIDATING)
    browser.login()
    csrf = browser.csrf()
    data = {"ids": m["id"], "csrf_token": csrf}
    assert browser.http.post("/console/cancel", data={"ids": m["id"]}).status_code == 403
    assert browser.http.post("/console/cancel", data={**data, "csrf_token": "x" + csrf}).status_code == 403
    foreign = browser.http.post("/console/cancel", data=data, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    cross = browser.http.post("/console/cancel", data=data, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    assert ("cancel", m["id"]) not in browser.orch.calls
    resp = browser.http.post("/console/cancel", data=data, headers={"Sec-Fetch-Site": "same-origin"})
    assert resp.status_code == 303 and ("cancel", m["id"]) in browser.orch.calls


def test_a_token_reset_ends_every_session(browser: Browser) -> None:
    browser.login()
    assert browser.http.get("/").status_code == 200
    reset_token(browser.folder)
    resp = browser.http.get("/")
    assert resp.status_code == 303 and "expired=1" in resp.headers["location"]
    assert browser.http.get("/").headers["location"].startswith("/console/login")  # the session is gone


def test_answers_carry_a_strict_policy(browser: Browser) -> None:
    resp = browser.http.get("/console/login")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert resp.headers["x-frame-options"] == "DENY" and resp.headers["cache-control"] == "no-store"


# -- the pages -----------------------------------------------------------------------------------------------


def test_everything_shown_is_escaped_and_secrets_are_masked(browser: Browser) -> None:
    (m,) = browser.create({"source": "smb://svc:S3cretPass@files/<script>alert(1)</script>", "target": "t1"})
    browser.store.append_event(m["id"], "error", "<img src=x onerror=alert(1)> password=S3cretPass", {})
    browser.login()
    for path in ("/", "/console/migrations", f"/console/migrations/{m['id']}"):
        text = browser.http.get(path).text
        assert "<script>alert" not in text and "<img src=x" not in text and "S3cretPass" not in text, path
    page = browser.http.get(f"/console/migrations/{m['id']}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "svc:***@files" in page


def test_dashboard_counts_and_what_needs_attention(browser: Browser) -> None:
    made = browser.create(*({"source": f"/b/db{i}", "target": "t1"} for i in range(3)))
    ready, failed, blocked = (m["id"] for m in made)
    for s in READY_PATH:
        browser.store.set_state(ready, s)
    browser.store.set_state(failed, State.FAILED, error="WAL segment 000000010000000000000007 is missing")
    browser.store.set_state(blocked, State.VALIDATING)
    browser.store.set_state(blocked, State.RESTORING_FULL)
    browser.store.set_status(
        blocked, {"state": "RestoringFull", "blocked_reason": "the store is unreachable"}
    )
    browser.login()
    page = browser.http.get("/").text
    counts = dict(re.findall(r'id="count-(\w+)"[^>]*><span class="n">(\d+)</span>', page))
    assert counts["ReadyForCutover"] == "1" and counts["Failed"] == "1" and counts["RestoringFull"] == "1"
    attention = page[page.index("Needs attention") : page.index("Load per target")]
    assert "000000010000000000000007 is missing" in attention and "the store is unreachable" in attention
    assert attention.index("Failed") < attention.index("Blocked")


def test_cutover_of_the_selected_shows_each_estimate_then_cuts_over(browser: Browser) -> None:
    made = browser.create(*({"source": f"/b/db{i}", "target": "t1"} for i in range(3)))
    ids = [m["id"] for m in made]
    for mid, estimate in zip(ids[:2], (12.5, 75.0), strict=True):
        for s in READY_PATH:
            browser.store.set_state(mid, s)
        browser.store.set_status(mid, {"state": "ReadyForCutover", "cutover_estimate_seconds": estimate})
    browser.login()
    listed = browser.http.get("/console/migrations", params={"state": "ReadyForCutover"}).text
    assert ids[0] in listed and ids[2] not in listed
    confirm = browser.http.get("/console/cutover", params=[("ids", i) for i in ids]).text
    assert "12.5 s" in confirm and "1 min 15 s" in confirm and "Not cut over" in confirm
    assert re.findall(r'name="ids" value="([^"]+)"', confirm) == ids[:2]  # exactly the ones that can
    resp = browser.http.post("/console/cutover", data={"ids": ids[:2], "csrf_token": browser.csrf()})
    assert resp.status_code == 303
    assert [c for c in browser.orch.calls if c[0] == "cutover"] == [("cutover", (i, None)) for i in ids[:2]]
    assert "Cutover requested for 2" in browser.http.get(resp.headers["location"]).text
    ready = browser.http.get("/console/cutover", params={"ready": "1"}).text
    assert sorted(re.findall(r'name="ids" value="([^"]+)"', ready)) == sorted(ids[:2])


PLAN = {
    "version": 1,
    "source": "/backups",
    "databases": [
        {
            "name": "Sales",
            "server": "SQL1",
            "engine": "sqlserver",
            "restores_to": "2026-05-01T10:00:00+00:00",
            "executable": True,
            "steps": [
                {"kind": "full", "files": ["Sales/full.bak"], "first_lsn": "1", "last_lsn": "2", "size": 2048}
            ],
            "findings": [],
        },
        {
            "name": "Hr",
            "server": "SQL1",
            "engine": "sqlserver",
            "executable": False,
            "steps": [],
            "findings": [
                {"code": "log-gap", "severity": "error", "message": "a gap between <b>3</b> and 7",
                 "hint": "put the missing log backups into the store", "files": ["Hr/2.trn"]}
            ],
        },
    ],
    "findings": [{"code": "not-a-backup", "severity": "info", "message": "README.md is not a backup",
                  "hint": "", "files": ["README.md"]}],
}  # fmt: skip


class PlannedScans(ScanJobs):
    """Scans that answer PLAN at once (or go on running), recording what was asked."""

    def __init__(self, running: bool = False) -> None:
        super().__init__()
        self.asked: list[ScanRequest] = []
        self.running = running
        self.release = asyncio.Event()

    async def _subprocess(self, request: ScanRequest) -> dict[str, Any]:
        self.asked.append(request)
        if self.running:
            await self.release.wait()
        return {"plan": PLAN}


def scanning_browser(
    tmp_path: Path, jobs: ScanJobs, targets: dict[str, TargetInfo] = TARGETS
) -> Iterator[Browser]:
    token = ensure_token(tmp_path)
    assert token is not None
    with SqlStateStore(str(tmp_path / "state.db"), targets=list(targets)) as store:
        orch = RecordingOrchestrator()
        app = create_app(store, orch, TokenVerifier(tmp_path), targets, scan_jobs=jobs)
        with TestClient(app, follow_redirects=False) as http:
            yield Browser(http, store, orch, tmp_path, token)


def test_new_migration_shows_the_databases_found_with_their_findings(tmp_path: Path) -> None:
    jobs = PlannedScans()
    for browser in scanning_browser(
        tmp_path, jobs, {**TARGETS, "sql1": TargetInfo("sql1", engine="sqlserver")}
    ):
        browser.login()
        location = "smb://svc:S3cretPass@files/backups"
        resp = browser.http.post(
            "/console/new/scan",
            data={"location": location, "databases": "Sales, Hr", "csrf_token": browser.csrf()},
        )
        assert resp.status_code == 303
        assert [(r.location, r.databases) for r in jobs.asked] == [(location, ["Sales", "Hr"])]
        page = browser.http.get(resp.headers["location"]).text
        assert "S3cretPass" not in page and "svc:***@files" in page  # the location stays on the server
        assert 'id="pick-0" checked' in page and re.search(r'id="pick-1"[^>]*disabled', page)
        assert "Cannot be restored" in page and "a gap between &lt;b&gt;3&lt;/b&gt; and 7" in page
        assert "put the missing log backups into the store" in page and "README.md is not a backup" in page
        key = re.search(r'name="scan" value="([^"]+)"', page)
        assert key
        form = {"scan": key.group(1), "pick": "0", "name-0": "sales-1", "target": "t2", "mode": "offline",
                "csrf_token": browser.csrf()}  # fmt: skip
        wrong = browser.http.post("/console/new/start", data=form)
        assert "choose a SQL Server target" in browser.http.get(wrong.headers["location"]).text
        assert browser.store.find() == []
        started = browser.http.post("/console/new/start", data={**form, "target": "sql1"})
        assert started.status_code == 303, started.text
        assert started.headers["location"].startswith("/console/migrations/mig-")
        (m,) = browser.store.find()
        assert (m.name, m.source, m.target, m.mode) == ("sales-1", location, "sql1", "offline")
        assert "Started 1 migration" in browser.http.get(started.headers["location"]).text


def test_a_long_scan_shows_as_running_until_its_plan_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ferry.web.newpage.SCAN_WAIT", 0.0)
    jobs = PlannedScans(running=True)
    for browser in scanning_browser(tmp_path, jobs):
        browser.login()
        resp = browser.http.post(
            "/console/new/scan", data={"location": "/b/sales", "csrf_token": browser.csrf()}
        )
        page = browser.http.get(resp.headers["location"]).text
        assert "Scanning /b/sales" in page and 'hx-trigger="every 2s"' in page
        browser.http.portal.call(jobs.release.set)  # type: ignore[union-attr]
        for _ in range(100):
            page = browser.http.get(resp.headers["location"]).text
            if "Scanning" not in page:
                break
        assert "Databases to migrate" in page


# -- what the pages are made of ----------------------------------------------------------------------------


def test_lag_samples_stay_bounded_and_keep_their_peaks() -> None:
    from ferry.web.lag import MAX_SAMPLES, LagHistory, chart

    now = [0.0]
    history = LagHistory(clock=lambda: now[0])
    for i in range(10 * MAX_SAMPLES):
        now[0] += 5
        lag = 500.0 if i == 7 else 1.0
        history.record({"id": "m", "state": "RestoringLogs", "status": {"lag_seconds": lag, "lag_bytes": 10}})
    samples = history.samples("m")
    assert len(samples) <= MAX_SAMPLES and max(s.seconds or 0 for s in samples) == 500.0
    assert samples[-1].at == now[0]
    drawn = chart(samples, "lag of <m>")
    assert "<polyline" in drawn.svg and "lag of &lt;m&gt;" in drawn.svg
    assert "8.3 min" in drawn.summary


def test_backup_sets_of_either_shape_and_the_result_proof() -> None:
    from ferry.web.views import backup_sets, result_view

    sets = backup_sets(
        {"details": {"backup_sets": [
            {"name": "wal", "kind": "log", "files": [{"name": "a", "status": "restored"}],
             "counts": {"restored": 9, "arrived": 1}, "shown": 1},
            {"name": "x.trn", "status": "Skipped", "reason": "already applied"},
        ]}}
    )  # fmt: skip
    assert (sets[0].total, sets[0].done, sets[0].percent) == (10, 9, 90)
    assert sets[1].files[0].status == "skipped" and sets[1].done == 1
    pg = result_view(
        {"result": {"final_lsn": "0/3000060", "promoted_at_lsn": "0/30000D8", "downtime_seconds": 2}}
    )
    assert pg and pg.downtime == "2.0 s" and pg.proofs[0].holds is True
    ms = result_view({"result": {"lsn_proof": False, "expected_last_lsn": "9", "restored_last_lsn": "8"}})
    assert ms and ms.proofs[0].holds is False and "does not hold" in ms.proofs[0].text
