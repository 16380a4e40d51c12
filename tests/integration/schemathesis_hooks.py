"""Schemathesis hooks for the run against `ferry serve` (test_service_schemathesis.py): half of the
migration ids in paths and cutover bodies are real ones (FERRY_ST_IDS), the rest what the schema allows;
batches of more than MAX_CREATED migrations are left out (each one starts a workflow: a batch of 1000 takes
tens of seconds on a busy CI machine, and its limits are tested in tests/unit/test_service_api.py)."""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

IDS = [i for i in os.environ.get("FERRY_ST_IDS", "").split(",") if i]
MAX_CREATED = 20


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    if isinstance(body, dict) and isinstance(body.get("migrations"), list):
        body = body["migrations"]
    return not (isinstance(body, list) and len(body) > MAX_CREATED)


@schemathesis.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    if not IDS or not path_parameters or "migration_id" not in path_parameters:
        return st.just(path_parameters)
    # Named functions, not lambdas: Hypothesis describes strategies by their functions' source.
    real = st.builds(_with_id, st.just(path_parameters), st.sampled_from(IDS))
    return st.one_of(st.just(path_parameters), real)


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> Any:
    if not IDS or not isinstance(body, dict) or not isinstance(body.get("ids"), list) or not body["ids"]:
        return st.just(body)
    real = st.builds(_with_ids, st.just(body), st.lists(st.sampled_from(IDS), min_size=1, max_size=3))
    return st.one_of(st.just(body), real)


def _with_id(path_parameters: dict[str, Any], migration_id: str) -> dict[str, Any]:
    return {**path_parameters, "migration_id": migration_id}


def _with_ids(body: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    return {**body, "ids": ids}
