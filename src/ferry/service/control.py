"""The control queue's worker: the migration workflows, and the state records they run as local activities.
Served by `ferry serve` (ferry/serve.py); the orchestration benchmark builds its own from this too."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ferry.service import workflow_io as io
from ferry.service.activities import ControlActivities

# Store writes queue on one SQLite connection anyway: more slots only add contention.
CONTROL_SLOTS = 16


def control_worker(client: Any, store: Any) -> Any:
    """The worker of the control queue: the workflows, and the state records they run as local
    activities (the benchmark builds its own from this too)."""
    from temporalio.worker import Worker

    from ferry.service.workflows import MigrationWorkflow

    ctl = ControlActivities(store)
    return Worker(
        client,
        task_queue=io.CONTROL_QUEUE,
        workflows=[MigrationWorkflow],
        activities=[ctl.record_state, ctl.record_event],
        activity_executor=ThreadPoolExecutor(CONTROL_SLOTS, thread_name_prefix="ferry-control"),
        max_concurrent_activities=CONTROL_SLOTS,
        max_concurrent_local_activities=CONTROL_SLOTS,
    )
