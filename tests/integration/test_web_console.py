"""The web console in a real headless Chromium against a real `ferry serve` (Temporal, the state store, the
API, local agents): a DBA runs whole migrations from the browser, of a PostgreSQL source and of a SQL
Server source (on the restore model, tests/mssql_model/), and the console refuses to work for anyone
without the token.

One server for the module (`xdist_group`: every test of it runs on one worker), with two targets: `pg`, a
local PostgreSQL target folder, and `ms`, the SQL Server model (when the backup corpus is here), as the
service's SQL Server tests start them (mssqlservice.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ferry.engines.postgres.target import PostgresTarget
from tests.conftest import corpus_root
from tests.integration.browser import chromium, shoot
from tests.integration.mssqlservice import RTC, RTC_BASE, RTC_LOGS, serve_with_model
from tests.integration.pgsource import make_root, require_postgres
from tests.integration.test_service_lifecycle import (
    count,
    make_source,
    start_serve,
    stop_serve,
    stop_targets,
    switch,
    token_from,
)

httpx = pytest.importorskip("httpx")
pytest.importorskip("temporalio")
pytest.importorskip("playwright")

pytestmark = pytest.mark.xdist_group("web-console")

LONG = 150_000  # ms: a migration step on a loaded machine (only ever waited for, never asserted on)


@dataclass
class Console:
    base: str
    token: str
    targets: Path  # the PostgreSQL target's folder
    sql_store: Path | None  # the SQL Server source's store, when the corpus is here
    sql_state: Path | None  # the model's state folder
    api: Any  # httpx.Client with the token

    def migration(self, ref: str) -> dict[str, Any]:
        r = self.api.get(f"/api/v1/migrations/{ref}")
        r.raise_for_status()
        return dict(r.json()["migration"])


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    require_postgres()
    with make_root("ferry-web-") as folder:
        yield folder


@pytest.fixture(scope="module")
def console(root: Path) -> Iterator[Console]:
    """`ferry serve` with targets `pg` and, when the corpus is here, `ms` (the SQL Server model)."""
    targets = root / "pg-targets"
    try:
        if corpus_root() is not None:
            for ms in serve_with_model(root, targets):
                store = ms.store("rtc")
                ms.add(store, *RTC_BASE, *RTC_LOGS)
                s = ms.served
                yield Console(f"http://127.0.0.1:{s.port}", s.token, targets, store, ms.state, s.api)
            return
        proc, port, _, out = start_serve(root / "data", "--target", f"pg={targets}:2")
        token = token_from(out.read_text())
        base = f"http://127.0.0.1:{port}"
        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        try:
            yield Console(base, token, targets, None, None, api)
        finally:
            api.close()
            stop_serve(proc)
    finally:
        stop_targets(targets)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Any, console: Console) -> Iterator[Any]:
    """A signed-in page of its own browser context (its own cookies)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    sign_in(page, console)
    try:
        yield page
    finally:
        context.close()


def sign_in(page: Any, console: Console) -> None:
    page.goto(console.base + "/")
    assert "/console/login" in page.url
    page.get_by_label("API token").fill(console.token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()  # the page after the sign-in, loaded


def start_from_new_page(
    page: Any, console: Console, location: Path, database: str | None, target: str
) -> str:
    """Scan the location, pick the database and the target, start online: the migration's id."""
    page.get_by_role("link", name="New migration").first.click()
    page.get_by_label("Where the backups are").fill(str(location))
    page.get_by_role("button", name="Scan").click()
    page.get_by_role("heading", name=re.compile("^Found at")).wait_for(timeout=LONG)
    picks = page.locator("input[name=pick]")
    if database is not None:
        for i in range(picks.count()):
            picks.nth(i).set_checked(False)
        page.locator(f'[data-database="{database}"] input[name=pick]').check()
    assert page.locator("input[name=pick]:checked").count() == 1
    page.get_by_label("Target", exact=True).select_option(target)
    page.get_by_label(re.compile("^Online")).check()
    page.get_by_role("button", name="Start migration").click()
    page.wait_for_url(re.compile(r"/console/migrations/mig-"))
    return str(page.url.rsplit("/", 1)[-1])


def wait_state(page: Any, words: str) -> None:
    """Until the live status line says it (the page refreshes itself: no reload here)."""
    page.locator("#live .state-line").filter(has_text=words).wait_for(timeout=LONG)


def test_a_postgresql_migration_from_the_browser(root: Path, console: Console, page: Any) -> None:
    src = make_source(root / "pg-src")
    try:
        mid = start_from_new_page(page, console, src.store, None, "pg")
        wait_state(page, "Ready for cutover")
        assert page.locator("#h-sets").is_visible() and page.get_by_text("WAL timeline").first.is_visible()
        src.write(1000)  # the application's last writes, archived before the cutover is asked for
        switch(src)
        page.locator("svg.lag-chart").wait_for(timeout=LONG)  # two samples of the lag, seen live
        shoot(page, "pg-ready")

        # From the list: select it, see its estimated downtime, confirm.
        page.get_by_role("link", name="Migrations", exact=True).click()
        page.locator(f"#sel-{mid}").check()
        shoot(page, "list")
        page.get_by_role("button", name="Cut over selected…").click()
        row = page.locator(f'tr[data-id="{mid}"]')
        assert row.locator(".estimate").inner_text() not in ("", "unknown")
        shoot(page, "confirm-cutover")
        page.get_by_role("button", name="Cut over 1 now").click()
        page.get_by_text("Cutover requested for 1").wait_for()

        page.get_by_role("link", name=console.migration(mid)["name"], exact=True).click()
        wait_state(page, "Succeeded")
        assert page.locator("#downtime").inner_text()
        assert page.get_by_text("LSN reached holds").is_visible()
        shoot(page, "pg-succeeded")
        m = console.migration(mid)
        assert m["state"] == "Succeeded" and m["status"]["result"]["downtime_seconds"] >= 0
        assert count(PostgresTarget.open(console.targets / mid)) == count(src.cluster)

        page.get_by_role("link", name="Dashboard").click()
        page.get_by_role("heading", name="Load per target").wait_for()
        shoot(page, "dashboard")
    finally:
        src.stop()


def test_a_sql_server_migration_from_the_browser(console: Console, page: Any) -> None:
    if console.sql_store is None or console.sql_state is None:
        pytest.skip("SQL Server backup corpus not found: set FERRY_SQLSERVER_CORPUS")
    from tests.mssql_model.client import ModelClient

    mid = start_from_new_page(page, console, console.sql_store, RTC, "ms")
    wait_state(page, "Ready for cutover")
    files = page.locator("table.files")
    assert files.get_by_text("RestoreTimeClean.bak").first.is_visible()
    shoot(page, "sql-ready")
    page.get_by_role("link", name="Dashboard").click()
    page.locator("#h-targets").wait_for()
    shoot(page, "dashboard-busy")
    page.go_back()

    page.get_by_role("link", name="Cut over…").click()
    assert page.locator(f'tr[data-id="{mid}"] .estimate').inner_text() not in ("", "unknown")
    page.get_by_role("button", name="Cut over 1 now").click()
    wait_state(page, "Succeeded")
    assert page.get_by_text("LSN match holds").is_visible()
    shoot(page, "sql-succeeded")
    m = console.migration(mid)
    assert m["state"] == "Succeeded" and m["status"]["result"]["lsn_proof"] is True
    assert ModelClient(console.sql_state).db_state(RTC) == "ONLINE"


def test_the_console_refuses_to_work_without_the_token(browser: Any, console: Console) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        for path in ("/", "/console/migrations", "/console/new"):
            page.goto(console.base + path)
            assert "/console/login" in page.url and page.get_by_label("API token").is_visible()
        refused = context.request.post(
            console.base + "/console/cutover", form={"ids": "x"}, max_redirects=0, fail_on_status_code=False
        )
        assert refused.status in (303, 401)
        # The form works from the keyboard: the token field has the focus, Enter sends it.
        page.keyboard.type("not-the-token")
        page.keyboard.press("Enter")
        page.get_by_role("alert").filter(has_text="not valid").wait_for()
        shoot(page, "login-refused")
        # The API token never becomes a page's to read: the session cookie is HttpOnly and Strict.
        sign_in(page, console)
        page.keyboard.press("Tab")  # the first stop skips to the content
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        (cookie,) = [c for c in context.cookies() if c["name"] == "ferry_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""
        # A signed-in browser still needs the page's CSRF token: forged or absent, it is refused.
        for form in ({"ids": "x"}, {"ids": "x", "csrf_token": "forged"}):
            answer = context.request.post(
                console.base + "/console/cancel", form=form, fail_on_status_code=False
            )
            assert answer.status == 403
        # And the cookie alone opens no API route: the API takes the bearer token only.
        assert context.request.get(console.base + "/api/v1/migrations").status == 401
    finally:
        context.close()
