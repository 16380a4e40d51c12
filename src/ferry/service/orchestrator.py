"""`TemporalOrchestrator`: the contracts.Orchestrator on Temporal.

One workflow per migration, its id the migration's id, on the control task queue. Starting many is one
concurrent round of start requests (asyncio.gather), so 100 migrations start in well under a second on a
local server; the workflows then run independently (none waits for another's bookkeeping). Cutover and
cancel are signals; a retry of a Failed migration starts a new run of the same workflow id with attempt+1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from anyio import to_thread
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from ferry.core.errors import FerryError
from ferry.core.migration import State
from ferry.core.redact import redact_location
from ferry.service import workflow_io as io
from ferry.service.contracts import MigrationRecord, StateStore, WorkflowEnded
from ferry.service.workflows import MigrationWorkflow

log = logging.getLogger(__name__)

RETRY_WAIT_SECONDS = 30.0
START_ATTEMPTS = 3


class OrchestratorError(FerryError):
    """Temporal refused or could not be reached."""


def workflow_input(record: MigrationRecord) -> io.MigrationInput:
    """What the workflow starts with. The source goes without its secrets: the steps read the whole of it
    from the state store (activities.py), so a credential never sits in Temporal's history, encrypted
    or not."""
    return io.MigrationInput(
        id=record.id,
        source=redact_location(record.source),
        target=record.target,
        mode=record.mode,
        last_backup=record.last_backup,
        attempt=record.attempt,
        database=record.database,
    )


class TemporalOrchestrator:
    def __init__(self, client: Client, store: StateStore, task_queue: str = io.CONTROL_QUEUE) -> None:
        self.client = client
        self.store = store
        self.task_queue = task_queue

    def handle(self, migration_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(migration_id)

    async def start(self, records: list[MigrationRecord]) -> None:
        """Start every record's workflow at once. A workflow that already runs counts as started."""
        results = await asyncio.gather(*(self._start(r) for r in records), return_exceptions=True)
        failed = [(r.id, e) for r, e in zip(records, results, strict=True) if isinstance(e, BaseException)]
        if failed:
            first_id, first = failed[0]
            raise OrchestratorError(
                f"{len(failed)} of {len(records)} workflow(s) could not be started "
                f"(first: {first_id}: {first})",
                "check that the Temporal server is reachable; retry the migrations once it is",
            )

    async def _start(self, record: MigrationRecord) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await self.client.start_workflow(
                    MigrationWorkflow.run,
                    workflow_input(record),
                    id=record.id,
                    task_queue=self.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                )
                return
            except WorkflowAlreadyStartedError:
                return
            except Exception:
                if attempt == START_ATTEMPTS:
                    raise
                await asyncio.sleep(0.2 * attempt)

    async def cutover(
        self,
        migration_id: str,
        final_lsn: str | None = None,
        attempt: int | None = None,
        last_backup: str | None = None,
    ) -> None:
        # The time of the request travels with it: the downtime is measured from here. The attempt binds
        # it to the run it is for, the name to the signal (workflows.py refuses anything else).
        attempt = attempt or await self._attempt(migration_id)
        signal = io.CutoverSignal(
            time.time(), final_lsn, attempt=attempt, signal=io.S_CUTOVER, last_backup=last_backup
        )
        await self.handle(migration_id).signal(MigrationWorkflow.cutover, signal)

    async def cancel(self, migration_id: str, attempt: int | None = None, drop: bool = False) -> None:
        attempt = attempt or await self._attempt(migration_id)
        try:
            await self.handle(migration_id).signal(
                MigrationWorkflow.cancel, io.CancelSignal(time.time(), attempt, drop=drop)
            )
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:  # "workflow execution already completed"
                raise WorkflowEnded(
                    f"the workflow of '{migration_id}' has ended", "see its state and events"
                ) from None
            raise

    async def _attempt(self, migration_id: str) -> int:
        record = await to_thread.run_sync(self.store.get, migration_id)
        if record is None:
            raise OrchestratorError(
                f"no migration '{migration_id}'", "list them with `ferry migrations list`"
            )
        return record.attempt

    async def retry(self, migration_id: str) -> None:
        """A new run for a Failed migration (the API moves it to Queued first; this does it when not)."""
        record = await to_thread.run_sync(self.store.get, migration_id)
        if record is None:
            raise OrchestratorError(
                f"no migration '{migration_id}'", "list them with `ferry migrations list`"
            )
        if record.state is State.FAILED:
            # Compare-and-set: of two retries at once, the second finds Queued and starts nothing.
            record = await to_thread.run_sync(
                partial(self.store.set_state, migration_id, State.QUEUED, expected=State.FAILED)
            )
        if record.state is not State.QUEUED:
            raise OrchestratorError(
                f"migration '{migration_id}' is {record.state.value}: only a Failed one is retried",
                "a running migration retries its steps by itself",
            )
        # The failed run records Failed a moment before its workflow closes; a new run under the same id
        # can start only once it has, or Temporal answers "already started" and nothing would run.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.handle(migration_id).result(), timeout=RETRY_WAIT_SECONDS)
        await self._start(record)

    async def query(self, migration_id: str) -> Mapping[str, Any]:
        """The workflow's own view (state, last status it saw): for diagnostics; the store is the truth."""
        result: Mapping[str, Any] = await self.handle(migration_id).query(MigrationWorkflow.status)
        return result
