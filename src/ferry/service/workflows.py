"""The durable migration workflow: one Temporal workflow per database migration (workflow id = migration id).

It walks the states of core.migration (only along TRANSITIONS):

    Queued -> Validating -> RestoringFull -> RestoringLogs <-> ReadyForCutover -> CuttingOver -> Succeeded
                                   (offline: ... RestoringLogs -> CuttingOver, automatically)
    any running state -> Failed (an activity failed for good) | Canceled (the `cancel` signal)

Every state change is recorded through the `ferry.record_state` activity, so the state store stays the
source of truth the API reads. It runs as a local activity, in the worker that runs the workflow (which
holds the store): a marker in the workflow's history instead of a task through the Temporal server, which
halves what each migration costs the server. Validating and CuttingOver are recorded by their steps as
they start (StepInput.enter), which saves a round trip between a request and the step that serves it.
While an online migration replays, its replay activity moves
it between RestoringLogs and ReadyForCutover in the store itself and tells the workflow with a `progress`
signal (for the `status` query).

Signals: `cutover` (CutoverSignal: when it was asked for, optional final LSN), `cancel` (CancelSignal),
`progress`. Query: `status`. A cancel is honoured until the cutover starts; a cutover cannot be stopped
half way.

Whoever reaches Temporal can send a workflow a signal, so the workflow acts only on what Ferry sent: every
payload is encrypted and authenticated by Ferry's codec (codec.py), and the handlers take their input raw
and check it (workflow_io.parse): a payload the codec refused, a value of another shape, a request made
for an earlier run (its `attempt`) or a signal Ferry does not send are refused, recorded as an `error`
event of the migration, and change nothing. A workflow started with an input Ferry did not make ends at
once, the same way. On `cutover` the
workflow starts the cutover activity at once; that activity stops the replay on its agent in-process
(activities.LocalReplays), so the downtime never waits for a heartbeat to carry a cancel.

The code here is deterministic: no I/O, no clocks but workflow.now(); the activities do the work. It runs
outside the SDK's sandbox (`sandboxed=False`): the sandbox re-imports the workflow's modules for every
workflow it starts, which cost more CPU per migration than everything else the worker does, and this
module imports nothing but the SDK and workflow_io (stdlib dataclasses).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from ferry.service import workflow_io as io

T = TypeVar("T")

# Recording in the state store: quick, retried for as long as it takes (the store may be restarting).
RECORD_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10))
# A step's heartbeat timeout: a dead agent is noticed within this, and its activity retried elsewhere.
HEARTBEAT = timedelta(seconds=10)
# Replay's is longer: the target server replays on its own while its agent is away (the activity only
# feeds the spool and reports), and hundreds of migrations wait in ReadyForCutover for days, each
# heartbeating at 80% of this (the SDK's throttle) into Temporal.
REPLAY_HEARTBEAT = timedelta(seconds=30)
# Errors no retry can fix come as non-retryable ApplicationErrors (FerryError.retryable): no list of
# error types here.
VALIDATE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)
RESTORE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
)
# Replay follows the archive for as long as the migration is online: retried without limit (a target
# server that cannot start shows in the activity's failures and in the events of each new attempt).
REPLAY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=0,
)
CUTOVER_RETRY = RESTORE_RETRY
# Refused signals recorded as events, per run: a flood of forgeries must not grow the history without end
# (the `status` query counts them all).
REFUSALS_RECORDED = 20
STOP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=5
)


class _Canceled(Exception):
    """The `cancel` signal arrived while a step ran or between steps."""


def failure_message(err: BaseException) -> str:
    """The message of the innermost cause a user can act on."""
    cause: BaseException | None = err
    message = str(err)
    while cause is not None:
        if isinstance(cause, ApplicationError):
            message = cause.message
        elif isinstance(cause, TimeoutError):
            message = f"a step timed out ({cause.type.name if cause.type else 'timeout'}): {cause.message}"
        elif not isinstance(cause, ActivityError):
            message = str(cause) or type(cause).__name__
        cause = cause.__cause__
    return message


@workflow.defn(name=io.WORKFLOW_NAME, sandboxed=False)
class MigrationWorkflow:
    @workflow.init
    def __init__(self, raw: Any = None) -> None:
        self._state = "Queued"
        self._status: dict[str, Any] = {}
        self._error: str | None = None
        self._result: dict[str, Any] | None = None
        # The input first (signals may come in the same activation as the start, before the run).
        parsed = io.parse(io.MigrationInput, raw)
        self._input = parsed if isinstance(parsed, io.MigrationInput) else None
        self._input_refusal = parsed if isinstance(parsed, str) else None
        self._attempt = self._input.attempt if self._input is not None else 0
        self._cutover: io.CutoverSignal | None = None
        self._cancel = False
        self._drop = False
        self._prepared: io.Prepared | None = None  # once validate returned: what stop_target needs
        self._cutting = False
        self._refused = 0

    # -- signals and queries ------------------------------------------------------------------------

    @workflow.signal(name=io.S_CUTOVER)
    async def cutover(self, raw: Any = None) -> None:
        request = io.parse(io.CutoverSignal, raw)
        if isinstance(request, io.CutoverSignal):
            request = self._for_this_run(request, request.attempt, request.signal, io.S_CUTOVER)
        if isinstance(request, str):
            await self._refuse(f"a '{io.S_CUTOVER}' signal", request)
        elif self._cutover is None:
            self._cutover = request

    @workflow.signal(name=io.S_CANCEL)
    async def cancel(self, raw: Any = None) -> None:
        request = io.parse(io.CancelSignal, raw) if raw is not None else "it carries no request"
        if isinstance(request, io.CancelSignal):
            request = self._for_this_run(request, request.attempt, request.signal, io.S_CANCEL)
        if isinstance(request, str):
            await self._refuse(f"a '{io.S_CANCEL}' signal", request)
        elif not self._cutting:  # a cutover that started is not stopped half way
            self._cancel = True
            self._drop = self._drop or request.drop

    @workflow.signal(name=io.S_PROGRESS)
    async def progress(self, raw: Any = None) -> None:
        signal = io.parse(io.ProgressSignal, raw)
        if isinstance(signal, str):
            await self._refuse(f"a '{io.S_PROGRESS}' signal", signal)
        elif not self._cutting and self._state in ("RestoringLogs", "ReadyForCutover"):
            self._state = signal.state
            self._status = signal.status

    @workflow.signal(dynamic=True)
    async def unknown_signal(self, name: str, args: Sequence[RawValue]) -> None:
        await self._refuse(f"a '{name[:100]}' signal", "Ferry's workflow takes no such signal")

    @workflow.query(name=io.Q_STATUS)
    def status(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "status": self._status,
            "error": self._error,
            "attempt": self._attempt,
            "result": self._result,
            "cutover_requested": self._cutover is not None,
            "cancel_requested": self._cancel,
            "signals_refused": self._refused,
        }

    def _for_this_run(self, request: T, attempt: int | None, kind: str | None, expected: str) -> T | str:
        if kind != expected:
            return f"it is a '{kind}' request, not a '{expected}' one"
        if attempt != self._attempt:
            return f"it was made for attempt {attempt}, and this is attempt {self._attempt}"
        return request

    async def _refuse(self, what: str, reason: str) -> None:
        """Record a signal (or a start) that Ferry did not send, or not for this run; nothing else changes."""
        self._refused += 1
        if self._refused > REFUSALS_RECORDED:
            return
        message = f"refused {what}: {reason}"
        workflow.logger.warning("migration %s %s", workflow.info().workflow_id, message)
        with contextlib.suppress(ActivityError):  # a workflow id that is no migration's: nothing to record
            await workflow.execute_local_activity(
                io.A_RECORD_EVENT,
                io.EventInput(
                    workflow.info().workflow_id, "error", message, {"refused": what, "reason": reason}
                ),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RECORD_RETRY,
            )

    # -- the run ------------------------------------------------------------------------------------

    @workflow.run
    async def run(self, raw: Any = None) -> dict[str, Any]:
        inp = self._input
        if inp is None or inp.id != workflow.info().workflow_id:
            # Not started by Ferry: acting on it could restore or promote a target nobody asked for.
            await self._refuse("a workflow start", self._input_refusal or "its input names another migration")
            return {"refused": self._input_refusal or "input of another migration"}
        try:
            self._result = await self._walk(inp)
            return self.status()
        except _Canceled:
            await self._stop_target(inp)
            left = "removed from the target" if self._drop else "left on the target as it was"
            await self._record(inp, "Canceled", phase=f"canceled: what was restored is {left}")
            return self.status()
        except (ActivityError, ApplicationError) as err:
            self._error = failure_message(err)
            await self._record(inp, "Failed", phase="failed", error=self._error)
            return self.status()

    async def _walk(self, inp: io.MigrationInput) -> dict[str, Any]:
        online = inp.mode == "online"
        if self._cancel:
            raise _Canceled()
        self._entered("Validating")
        prepared = await self._step(
            workflow.start_activity(
                io.A_VALIDATE,
                io.StepInput(inp, enter="Validating"),
                result_type=io.Prepared,
                task_queue=io.ops_queue(inp.target),
                start_to_close_timeout=timedelta(hours=2),
                heartbeat_timeout=HEARTBEAT,
                retry_policy=VALIDATE_RETRY,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        )
        self._prepared = prepared
        step = io.StepInput(inp, prepared)
        restored = io.RestoreDone(skipped=True)
        if prepared.phase in ("new", "interrupted"):
            await self._record(
                inp,
                "RestoringFull",
                phase="restoring the full backup",
                bytes_done=0,
                bytes_total=prepared.full_size,
            )
            restored = await self._step(
                workflow.start_activity(
                    io.A_RESTORE_BASE,
                    step,
                    result_type=io.RestoreDone,
                    task_queue=io.restore_queue(inp.target),
                    start_to_close_timeout=timedelta(days=7),
                    heartbeat_timeout=HEARTBEAT,
                    retry_policy=RESTORE_RETRY,
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            )
        await self._record(inp, "RestoringLogs", phase="starting the target server")
        replay = workflow.start_activity(
            io.A_REPLAY,
            step,
            result_type=io.ReplayDone,
            task_queue=io.ops_queue(inp.target),
            start_to_close_timeout=timedelta(days=365),
            heartbeat_timeout=REPLAY_HEARTBEAT,
            retry_policy=REPLAY_RETRY,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        done: io.ReplayDone | None = None
        if online:
            await workflow.wait_condition(lambda: replay.done() or self._cancel or self._cutover is not None)
            if self._cancel:
                # stop_target stops the replay on its agent at once (a cancel through Temporal reaches it
                # only with its next heartbeat); this request ends the attempt Temporal holds.
                replay.cancel()
                raise _Canceled()
            request = self._cutover
            if request is None:  # replay ended by itself online: only an error does that
                await replay
                raise ApplicationError("replay ended without a cutover request", type="UsageError")
            # The replay keeps running: the cutover activity stops it on the agent, at once, and takes over
            # (a cancel through Temporal would reach it only with its next heartbeat). The cutover reads
            # where replay started from the target folder.
        else:
            ended = await self._step(replay)
            done = ended
            request = io.CutoverSignal(ended.requested_at, ended.final_lsn)
        self._cutting = True
        self._entered("CuttingOver")
        result: dict[str, Any] = await workflow.execute_activity(
            io.A_CUTOVER,
            io.CutoverInput(
                io.StepInput(inp, prepared, enter="CuttingOver"),
                requested_at=request.requested_at,
                final_lsn=request.final_lsn,
                restored_bytes=restored.archive_bytes,
                restore_seconds=restored.seconds,
                replay_started_at=done.started_at if done else None,
                replay_started_lsn=done.started_lsn if done else None,
                last_backup=request.last_backup,
            ),
            result_type=dict,
            task_queue=io.ops_queue(inp.target),
            start_to_close_timeout=timedelta(days=1),
            heartbeat_timeout=HEARTBEAT,
            retry_policy=CUTOVER_RETRY,
        )
        if not replay.done():  # stopped on the agent already; this ends an attempt Temporal still holds
            replay.cancel()
        await self._record(inp, "Succeeded", phase="done", result=result)
        return result

    async def _step(self, handle: workflow.ActivityHandle[T]) -> T:
        """Wait for a step, or cancel it when the `cancel` signal comes first."""
        if self._cancel:
            handle.cancel()
        await workflow.wait_condition(lambda: handle.done() or self._cancel)
        if self._cancel:
            if not handle.done():
                handle.cancel()
            with contextlib.suppress(ActivityError, asyncio.CancelledError):
                await handle
            raise _Canceled()
        return await handle

    def _entered(self, state: str) -> None:
        """A state the next step records in the store itself as it starts (StepInput.enter); the workflow
        only keeps it for its `status` query."""
        self._state = state
        self._status = {"state": state, "phase": io.ENTRY_PHASES[state]}

    async def _record(
        self, inp: io.MigrationInput, state: str, *, phase: str, error: str | None = None, **status: Any
    ) -> None:
        self._state = state
        self._status = {"state": state, "phase": phase, **status}
        if error is not None:
            self._status["blocked_reason"] = error
        await workflow.execute_local_activity(
            io.A_RECORD_STATE,
            io.StateChange(inp.id, state, self._status, error),
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=RECORD_RETRY,
        )

    async def _stop_target(self, inp: io.MigrationInput) -> None:
        """Stop restoring and leave the target as it is (or remove it, when the cancel asked to drop it).
        Best effort: a dead agent does not block Canceled."""
        try:
            await workflow.execute_activity(
                io.A_STOP_TARGET,
                io.StepInput(inp, self._prepared, drop=self._drop),
                task_queue=io.ops_queue(inp.target),
                schedule_to_close_timeout=timedelta(minutes=5),
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=STOP_RETRY,
            )
        except ActivityError as err:
            await workflow.execute_local_activity(
                io.A_RECORD_EVENT,
                io.EventInput(inp.id, "error", f"could not stop the target server: {failure_message(err)}"),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RECORD_RETRY,
            )
