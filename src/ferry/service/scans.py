"""Scans of a store for the API (`POST /api/v1/scans`): what `ferry plan --json` prints, as jobs.

A scan of a large store reads thousands of headers: seconds to minutes, all of it CPU in Python. It must
neither hold an API request nor share the interpreter with the workflows `ferry serve` runs, so each scan
runs in a process of its own (`python -m ferry.service.scans`, the request on its stdin: a location's
credentials never appear in a command line other users can read), at most SCANS_AT_ONCE at a time, and is
killed when it runs longer than the timeout. The API answers with the plan when the scan ends within the
request's `wait_seconds`, else with the job's id, which the client polls (`GET /api/v1/scans/{id}`).
Finished jobs are kept for KEEP_SECONDS (at most KEEP_JOBS of them), in memory: a restarted server forgets
them, and the client scans again.

The plan is the documented contract of `ferry plan --json` (docs/engines.md); its `source` and any text
that quotes the location are redacted (core/redact.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ferry.core.errors import FerryError, StoreError, UsageError
from ferry.core.redact import redact_location, redact_text, redact_value

SCANS_AT_ONCE = 2
DEFAULT_TIMEOUT = 600.0
KEEP_SECONDS = 3600.0
KEEP_JOBS = 200
OUTPUT_LIMIT = 256 << 20  # bytes of plan a scan may print; a larger one fails the job, it never fills memory


@dataclass
class ScanRequest:
    location: str
    databases: list[str] = field(default_factory=list)
    stop_at: str | None = None  # ISO 8601 time, or "lsn:<n>"


@dataclass
class ScanJob:
    id: str
    location: str  # redacted
    started_at: float
    state: str = "running"  # running, done, failed
    finished_at: float | None = None
    plan: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "location": self.location,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at) if self.finished_at is not None else None,
            "seconds": round((self.finished_at or time.time()) - self.started_at, 3),
            "plan": self.plan,
            "error": self.error,
        }
        return out


def _iso(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).isoformat()


def new_scan_id() -> str:
    return "scan-" + base64.b32encode(secrets.token_bytes(7)).decode().lower()[:10]


class ScanJobs:
    """The scans of one API process."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, at_once: int = SCANS_AT_ONCE) -> None:
        self.timeout = timeout
        self._gate: asyncio.Semaphore | None = None
        self._at_once = at_once
        self._jobs: OrderedDict[str, ScanJob] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, request: ScanRequest) -> ScanJob:
        """Start a scan in the background (call in the event loop that serves the API)."""
        self._forget_old()
        job = ScanJob(new_scan_id(), redact_location(request.location), time.time())
        self._jobs[job.id] = job
        task = asyncio.get_running_loop().create_task(self._run(job, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def get(self, scan_id: str) -> ScanJob | None:
        self._forget_old()
        return self._jobs.get(scan_id)

    async def wait(self, job: ScanJob, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), seconds)

    def _forget_old(self) -> None:
        now = time.time()
        for key in list(self._jobs):
            job = self._jobs[key]
            old = job.finished_at is not None and now - job.finished_at > KEEP_SECONDS
            if old or (len(self._jobs) > KEEP_JOBS and job.finished_at is not None):
                del self._jobs[key]

    async def _run(self, job: ScanJob, request: ScanRequest) -> None:
        if self._gate is None:
            self._gate = asyncio.Semaphore(self._at_once)
        try:
            async with self._gate:
                answer = await self._subprocess(request)
        except Exception as exc:  # never lost: the job says what happened
            answer = {"error": _error("internal", f"the scan failed: {type(exc).__name__}: {exc}", "")}
        job.finished_at = time.time()
        if "plan" in answer:
            job.plan, job.state = redact_value(answer["plan"]), "done"
        else:
            job.error, job.state = redact_value(answer.get("error")), "failed"
        job.done.set()

    async def _subprocess(self, request: ScanRequest) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ferry.service.scans",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            limit=OUTPUT_LIMIT,
        )  # fmt: skip
        payload = json.dumps(
            {"location": request.location, "databases": request.databases, "stop_at": request.stop_at}
        ).encode()
        try:
            out, err = await asyncio.wait_for(proc.communicate(payload), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return {
                "error": _error(
                    "scan_timeout",
                    f"the scan of '{redact_location(request.location)}' did not end within "
                    f"{self.timeout:.0f} s",
                    "scan a folder nearer the databases you want, or raise `ferry serve --scan-timeout`",
                )
            }
        try:
            answer = json.loads(out)
            if not isinstance(answer, dict):
                raise ValueError("not an object")
            return answer
        except ValueError:
            lines = err.decode(errors="replace").strip().splitlines()
            tail = redact_text(lines[-1]) if lines else ""
            return {
                "error": _error(
                    "internal",
                    f"the scan process ended without a plan (exit code {proc.returncode}): {tail}",
                    "this is a bug in Ferry; the server's log has the details, please report it",
                )
            }


def _error(code: str, message: str, hint: str) -> dict[str, Any]:
    return {"code": code, "message": redact_text(message), "hint": redact_text(hint), "details": None}


# -- the scan process ------------------------------------------------------------------------------------


def scan_plan(request: ScanRequest) -> dict[str, Any]:
    """What `ferry plan LOCATION --json [--database D]... [--stop-at T | --stop-at-lsn N]` prints."""
    from datetime import datetime

    from ferry.core.catalog import RecoveryTarget
    from ferry.engines.registry import all_engines
    from ferry.pipeline.catalog import build_plan, select_databases
    from ferry.pipeline.discover import scan
    from ferry.stores.registry import open_location

    target: RecoveryTarget | None = None
    if request.stop_at:
        if request.stop_at.startswith("lsn:"):
            target = RecoveryTarget(lsn=request.stop_at[4:])
        else:
            try:
                target = RecoveryTarget(time=datetime.fromisoformat(request.stop_at))
            except ValueError:
                raise UsageError(
                    f"stop_at '{request.stop_at}' is neither an ISO 8601 time nor lsn:<LSN>",
                    "e.g. 2017-05-18T04:18:31 or lsn:25000000022000001",
                ) from None
    store, prefix = open_location(request.location)
    engines = all_engines()
    result = scan(store, engines, prefix)
    plan = build_plan(redact_location(request.location), result, engines, target=target)
    return select_databases(plan, request.databases).to_json()


def main() -> int:
    try:
        raw = json.loads(sys.stdin.read())
        request = ScanRequest(str(raw["location"]), [str(d) for d in raw.get("databases") or []],
                              raw.get("stop_at"))  # fmt: skip
        answer: dict[str, Any] = {"plan": scan_plan(request)}
    except (UsageError, StoreError) as exc:
        code = "store_unreachable" if isinstance(exc, StoreError) else "invalid_request"
        answer = {"error": _error(code, exc.message, exc.hint)}
    except FerryError as exc:
        answer = {"error": _error("scan_failed", exc.message, exc.hint)}
    except OSError as exc:
        reason = exc.strerror or str(exc)
        answer = {"error": _error("store_unreachable", f"cannot read the location: {reason}", "")}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
