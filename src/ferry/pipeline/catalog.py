"""The catalog and plan stages: from a scan's backup sets to per-database catalogs and restore plans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ferry.core.catalog import Catalog, RecoveryTarget
from ferry.core.errors import UsageError
from ferry.core.plan import Plan
from ferry.engines.base import Engine
from ferry.pipeline.discover import ScanResult


def build_catalog(source: str, result: ScanResult, engines: Sequence[Engine]) -> Catalog:
    databases = []
    findings = list(result.findings)
    for engine in engines:
        dbs, more = engine.catalog(result.sets_for(engine.name))
        databases.extend(dbs)
        findings.extend(more)
    return Catalog(
        source=source,
        databases=tuple(databases),
        findings=tuple(findings),
        files_scanned=len(result.files),
        bytes_read=result.bytes_read,
    )


def build_plan(
    source: str, result: ScanResult, engines: Sequence[Engine], *, target: RecoveryTarget | None = None
) -> Plan:
    plans = []
    findings = list(result.findings)
    for engine in engines:
        dbs, more = engine.plan(result.sets_for(engine.name), target)
        plans.extend(dbs)
        findings.extend(more)
    return Plan(source=source, databases=tuple(plans), findings=tuple(findings))


def select_databases(plan: Plan, names: Sequence[str]) -> Plan:
    """Keep the databases named (case-insensitive, as SQL Server's default collations compare names).
    A name that matches nothing is a usage error that lists what the store holds."""
    if not names:
        return plan
    wanted = {n.casefold() for n in names}
    have = {d.name.casefold() for d in plan.databases}
    missing = [n for n in names if n.casefold() not in have]
    if missing:
        listed = ", ".join(sorted({d.name for d in plan.databases})) or "none"
        raise UsageError(
            f"no backups of database {', '.join(repr(m) for m in missing)} in '{plan.source}'",
            f"databases found there: {listed}",
        )
    return replace(plan, databases=tuple(d for d in plan.databases if d.name.casefold() in wanted))
