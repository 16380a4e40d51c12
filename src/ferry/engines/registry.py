"""The engines Ferry knows, by name: their readers (in the order their sniffers are asked about a file) and
their migrators (the execution seam).

Engines are found by name, through importlib, never imported here: the service and the agent look a
migrator up by the engine name of a target without depending on any engine package (the import contract
in pyproject.toml holds them to that), and an engine's heavy imports happen only when it is used.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ferry.core.errors import UsageError
from ferry.engines.base import Engine, Migrator

# name: (reader class, migrator class) as "module:attribute"
ENGINES: dict[str, tuple[str, str]] = {
    "sqlserver": (
        "ferry.engines.sqlserver.engine:SqlServerEngine",
        "ferry.engines.sqlserver.driver:SqlServerMigrator",
    ),
    "postgres": (
        "ferry.engines.postgres.engine:PostgresEngine",
        "ferry.engines.postgres.driver:PostgresMigrator",
    ),
}
_migrators: dict[str, Migrator] = {}


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def all_engines() -> list[Engine]:
    return [_load(reader)() for reader, _ in ENGINES.values()]


def engine(name: str) -> Engine:
    return _load(_entry(name)[0])()  # type: ignore[no-any-return]


def migrator(name: str) -> Migrator:
    """The migrator of engine `name`, one per process (it holds what its steps hand each other)."""
    if name not in _migrators:
        try:
            _migrators[name] = _load(_entry(name)[1])()
        except (ImportError, AttributeError):
            raise UsageError(
                f"this build of Ferry cannot migrate {name} databases yet",
                f"migrate onto a target of an engine it can run: {', '.join(runnable())}",
            ) from None
    return _migrators[name]


def runnable() -> list[str]:
    out = []
    for name, (_, path) in ENGINES.items():
        module = path.partition(":")[0]
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def _entry(name: str) -> tuple[str, str]:
    try:
        return ENGINES[name]
    except KeyError:
        raise UsageError(f"no engine '{name}'", f"Ferry's engines are {', '.join(sorted(ENGINES))}") from None
