"""Fixtures of the service's API tests: a recording orchestrator, the API on FastAPI's TestClient, and a
real uvicorn server for the CLI, each on a real SQLite state store and the real token files."""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from rich.console import Console
from typer.testing import CliRunner

from ferry.cli import migrations as cli_migrations
from ferry.cli.main import app as cli_app
from ferry.core.migration import State
from ferry.service.api import TargetInfo, create_app
from ferry.service.auth import TokenVerifier, ensure_token
from ferry.service.contracts import MigrationRecord, WorkflowEnded
from ferry.service.store import SqlStateStore

with warnings.catch_warnings():
    # Starlette 1.x asks for the httpx2 package in its test client; httpx is what Ferry ships with.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TARGETS = {"t1": TargetInfo("t1", host="db-east-1"), "t2": TargetInfo("t2")}
READY_PATH = (State.VALIDATING, State.RESTORING_FULL, State.RESTORING_LOGS, State.READY_FOR_CUTOVER)


@dataclass
class RecordingOrchestrator:
    """Ferry's Orchestrator protocol, recording each call; `down` makes calls fail as Temporal would."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    down: bool = False
    ended: set[str] = field(default_factory=set)  # migrations whose workflow has ended

    def _call(self, what: str, arg: Any) -> None:
        if self.down:
            raise ConnectionError("Temporal at 127.0.0.1:7233 is unreachable")
        self.calls.append((what, arg))

    async def start(self, records: list[MigrationRecord]) -> None:
        self._call("start", [r.id for r in records])

    async def cutover(
        self,
        migration_id: str,
        final_lsn: str | None = None,
        attempt: int | None = None,
        last_backup: str | None = None,
    ) -> None:
        self._call(
            "cutover",
            (migration_id, final_lsn) if last_backup is None else (migration_id, final_lsn, last_backup),
        )

    async def cancel(self, migration_id: str, attempt: int | None = None, drop: bool = False) -> None:
        if migration_id in self.ended:
            raise WorkflowEnded(f"the workflow of '{migration_id}' has ended")
        self._call("cancel", (migration_id, "drop") if drop else migration_id)

    async def retry(self, migration_id: str) -> None:
        self._call("retry", migration_id)


@dataclass
class Api:
    http: TestClient
    store: SqlStateStore
    orch: RecordingOrchestrator
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.http.post(f"/api/v1{path}", json=body, headers=self.auth, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        return self.http.get(f"/api/v1{path}", headers=self.auth, **kw)

    def create(self, *sources: str, **fields: Any) -> list[dict[str, Any]]:
        resp = self.post("/migrations", [{"source": s, "target": "t1", **fields} for s in sources])
        assert resp.status_code == 201, resp.text
        return list(resp.json()["migrations"])

    def advance(self, migration_id: str, *states: State) -> None:
        for s in states:
            self.store.set_state(migration_id, s)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    token = ensure_token(tmp_path)
    assert token is not None
    with SqlStateStore(str(tmp_path / "state.db"), targets=list(TARGETS)) as store:
        orch = RecordingOrchestrator()
        app = create_app(store, orch, TokenVerifier(tmp_path), TARGETS)
        with TestClient(app, raise_server_exceptions=False) as http:
            yield Api(http, store, orch, token)


def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    """The one error shape, with a message and a hint."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "hint", "details"}
    assert body["error"]["code"] == code and body["error"]["message"]
    return dict(body["error"])


@dataclass
class Server:
    url: str
    store: SqlStateStore
    orch: RecordingOrchestrator
    token: str

    def run(self, *args: str, token: str | None = None) -> Any:
        env = {"FERRY_API": self.url, "FERRY_TOKEN": self.token if token is None else token}
        return CliRunner().invoke(cli_app, ["migrations", *args], env=env)

    def advance(self, migration_id: str, *states: State) -> None:
        for s in states:
            self.store.set_state(migration_id, s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("serve")
    token = ensure_token(folder)
    assert token is not None
    store = SqlStateStore(str(folder / "state.db"), targets=list(TARGETS))
    orch = RecordingOrchestrator()
    app = create_app(store, orch, TokenVerifier(folder), TARGETS)
    port = _free_port()
    # log_config=None: uvicorn's loggers propagate to the root, where caplog sees its access log.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=True, log_level="debug"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", store, orch, token)
    finally:
        uv.should_exit = True
        thread.join(10)
        store.close()


@pytest.fixture
def no_kept_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI must not find a token a developer kept on this machine; its output is not wrapped."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli_migrations, "out", Console(width=200))
    monkeypatch.setattr(cli_migrations, "err", Console(stderr=True, width=200))
