"""Schemathesis against the live OpenAPI document of a running `ferry serve`: every operation, with ids of
real migrations (schemathesis_hooks.py) as well as generated ones, every phase and every check schemathesis
runs by default (schemathesis.toml says where and why a few are left out). No answer may be a 5xx or a
status the document does not list, and a body the schema allows must not be refused for its form. About
two minutes on two busy cores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_service_lifecycle import start_serve, token_from

httpx = pytest.importorskip("httpx")
pytest.importorskip("schemathesis")

REPO = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = 30  # per operation and phase


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("schemathesis")
    # A target no agent serves: migrations created by the run start their workflows and wait (cheap),
    # and those named below stay there for the run to poke at.
    proc, port, _, out = start_serve(root / "data", "--target", "remote")
    token = token_from(out.read_text())
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        ) as api:
            made = api.post(
                "/api/v1/migrations",
                json=[
                    {"source": f"/backups/pg/db{i}", "target": "remote", "name": f"db{i}"} for i in range(3)
                ],
            )
            assert made.status_code == 201, made.text
            ids = [m["id"] for m in made.json()["migrations"]]
        yield {"root": root, "port": port, "token": token, "refs": [*ids, "db0", "db1"], "out": out}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_no_5xx_and_no_undocumented_answer(served: dict[str, Any]) -> None:
    st = Path(sys.executable).with_name("st")
    env = {**os.environ, "FERRY_ST_IDS": ",".join(served["refs"]), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [str(st), "--config-file", str(CONFIG), "run", f"http://127.0.0.1:{served['port']}/openapi.json",
         "-H", f"Authorization: Bearer {served['token']}",
         "--max-examples", str(EXAMPLES), "--workers", "2",
         "--request-timeout", "30", "--generation-database", "none", "--no-color"],
        cwd=served["root"], env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:]
    assert "Selected: 9/9" in done.stdout and "Tested: 9" in done.stdout
    log = served["out"].read_text(errors="replace")
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
