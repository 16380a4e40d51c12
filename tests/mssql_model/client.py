"""Inspecting a model's state from a test, without going through TDS: reads the state file the model
writes atomically after every change, so it works on a model running in another process too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.mssql_model.catalog import Database, State, load_state


class ModelClient:
    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)

    def state(self) -> State:
        return load_state(self.state_dir)

    def databases(self) -> dict[str, Database]:
        return {db.name: db for db in self.state().databases.values()}

    def database(self, name: str) -> Database | None:
        return self.state().database(name)

    def db_state(self, name: str) -> str | None:
        db = self.database(name)
        if db is None:
            return None
        return "STANDBY" if db.is_in_standby else db.state

    def history(self, database: str | None = None) -> list[dict[str, Any]]:
        """restorehistory rows joined to their backupset row, oldest first."""
        state = self.state()
        sets = {row["backup_set_id"]: row for row in state.backupset}
        out = []
        for row in state.restorehistory:
            if database is None or row["destination_database_name"].lower() == database.lower():
                out.append({**sets.get(row["backup_set_id"], {}), **row})
        return out

    def restore_counts(self, database: str | None = None) -> dict[str, int]:
        """How many times each backup set (by BackupSetGUID) was restored."""
        counts: dict[str, int] = {}
        for row in self.history(database):
            counts[row["backup_set_uuid"]] = counts.get(row["backup_set_uuid"], 0) + 1
        return counts
