"""The state store: migrations, their append-only event logs, catalog/plan snapshots and known targets.

SQLAlchemy 2 Core on SQLite by default (a file in Ferry's data folder) or PostgreSQL by URL
(`postgresql+psycopg://user@host/db`). The schema is made and upgraded by the alembic migrations shipped
next to this module, run at every open (`upgrade head`, a no-op when current).

Concurrency, which is the point of most choices here:
- SQLite runs in WAL mode (readers never wait for the writer) with a busy timeout, and every write
  transaction starts with BEGIN IMMEDIATE: a deferred transaction that reads and then writes can fail at
  once with "database is locked" when another connection committed in between, and the busy timeout does
  not help there. In one process, writers queue on a single pooled connection (a fair queue) instead of
  sleeping in SQLite's busy handler; other processes wait through the busy timeout.
- PostgreSQL locks one migration's row only: each migration keeps its own event counter (`last_seq`), so
  appending to one log never waits for another migration's bookkeeping.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from ferry.core.errors import FerryError
from ferry.core.migration import InvalidTransition, State, transition
from ferry.core.redact import redact_location, redact_text, redact_value
from ferry.service.contracts import NAME_PATTERN, Event, MigrationRecord, MigrationRequest, Mode
from ferry.service.store_db import (
    default_url,
    events,
    metadata,
    migrations,
    open_engines,
    resolve_url,
    snapshots,
    targets,
    upgrade_schema,
)

__all__ = ["SqlStateStore", "StateStoreError", "default_url", "metadata", "resolve_url", "upgrade_schema"]

if TYPE_CHECKING:
    from ferry.service.contracts import StateStore

ID_PREFIX = "mig-"
ID_RE = re.compile(r"^mig-[a-z2-7]{10}$")
NAME_RE = re.compile(NAME_PATTERN)
MODES: tuple[Mode, ...] = ("online", "offline")
EVENT_KINDS = frozenset({"step", "info", "error"})  # "state" events come from set_state only


class StateStoreError(FerryError):
    """The state store cannot be opened or used."""


class UnknownMigration(FerryError, LookupError):
    retryable = False

    def __init__(self, migration_id: str) -> None:
        super().__init__(f"no migration '{migration_id}'", "list the migrations with `ferry migrations list`")
        self.migration_id = migration_id


class StateConflict(InvalidTransition):
    """A compare-and-set of a migration's state that found another state: someone else moved it first."""

    def __init__(self, migration_id: str, current: State, expected: State, wanted: State) -> None:
        super().__init__(current, wanted)
        self.message = (
            f"migration '{migration_id}' is {current.value}, not {expected.value}: it was not moved to "
            f"{wanted.value}"
        )
        self.hint = "another request moved it first; look at its state and events"
        self.migration_id, self.current, self.expected = migration_id, current, expected


class BatchRejected(FerryError, ValueError):
    """A create request the store refuses as a whole. `code` says why, for the API's error shape."""

    def __init__(self, code: str, message: str, hint: str, details: Any = None) -> None:
        super().__init__(message, hint)
        self.code = code
        self.details = details


# -- helpers ----------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """`mig-` and 10 base32 characters (50 random bits): short, URL-safe, lowercase."""
    return ID_PREFIX + base64.b32encode(secrets.token_bytes(7)).decode().lower()[:10]


def base_name(source: str) -> str:
    """A default name from the source folder's last component: `s3://b/pg/db1/` gives `db1`. Taken from
    the redacted source: a source with no path after its host must not lend its password to the name."""
    source = redact_location(source)
    path = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", source.split("?", 1)[0].split("#", 1)[0])
    last = re.split(r"[/\\]", path.rstrip("/\\"))[-1]
    return _usable(last)


def database_name(database: str) -> str:
    """A default name from the database's name, whole (`Sales/EU` gives `Sales-EU`)."""
    return _usable(database)


def _usable(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:100]
    if not cleaned or ID_RE.match(cleaned):
        return "migration" if not cleaned else f"m-{cleaned}"
    return cleaned


def _check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None


def _record(row: Row[Any]) -> MigrationRecord:
    m = row._mapping
    return MigrationRecord(
        id=m["id"],
        name=m["name"],
        source=m["source"],
        target=m["target"],
        mode=m["mode"],
        state=State(m["state"]),
        last_backup=m["last_backup"],
        status=dict(m["status"] or {}),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        error=m["error"],
        attempt=m["attempt"],
        database=m["database"],
    )


def _event(row: Row[Any]) -> Event:
    m = row._mapping
    return Event(m["migration_id"], m["seq"], m["at"], m["kind"], m["message"], dict(m["data"] or {}))


def _invalid(message: str, hint: str, index: int) -> BatchRejected:
    return BatchRejected("invalid_request", message, hint, {"index": index})


def validate_request(req: MigrationRequest, index: int = 0) -> None:
    """The checks every create passes, whoever calls: the API repeats them with nicer locations."""
    if not req.source.strip():
        raise _invalid(f"migration #{index + 1} has an empty source", "give the store URL or path", index)
    if not req.target.strip():
        raise _invalid(f"migration #{index + 1} has an empty target", "name a known target", index)
    if req.mode not in MODES:
        raise _invalid(
            f"migration #{index + 1} has mode '{req.mode}'", "the mode is online or offline", index
        )
    if req.last_backup is not None and req.mode != "offline":
        raise _invalid(
            f"migration #{index + 1} names a last backup but is online",
            "a last backup ends an offline migration; drop it or make the migration offline",
            index,
        )
    if req.database is not None and (not req.database.strip() or "\x00" in req.database):
        why = f"migration #{index + 1} names an empty database"
        raise _invalid(why, "give the database's name, or leave it out", index)
    if req.name is not None and (not NAME_RE.match(req.name) or ID_RE.match(req.name)):
        raise _invalid(
            f"migration #{index + 1} has the name '{req.name}', which Ferry cannot use",
            "use up to 128 letters, digits, '.', '_' or '-', starting with a letter or digit, "
            "and not shaped like an id (mig-...)",
            index,
        )


# -- the store --------------------------------------------------------------------------------------


class SqlStateStore:
    """`StateStore` on SQLite or PostgreSQL; safe to share between threads and processes."""

    def __init__(self, url: str | None = None, targets: Iterable[str] = ()) -> None:
        self.url = resolve_url(url)
        self._writer, self._reader = open_engines(self.url)
        try:
            upgrade_schema(self._writer)
        except sa.exc.OperationalError as exc:
            self.close()
            shown = sa.make_url(self.url).render_as_string(hide_password=True)
            raise StateStoreError(
                f"cannot open the state store '{shown}': {exc.orig}",
                "check that the database server is running and the URL, user and database are right",
            ) from None
        for name in targets:
            self.register_target(name)

    def close(self) -> None:
        self._writer.dispose()
        if self._reader is not self._writer:
            self._reader.dispose()

    def __enter__(self) -> SqlStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._reader.connect() as conn:
            yield conn

    # -- targets -----------------------------------------------------------------------------------

    def register_target(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Make a target known (agents do it when they start); registering again updates its data."""
        if not NAME_RE.match(name):
            raise ValueError(f"target name '{name}' is not usable: letters, digits, '.', '_', '-' only")
        _check_json(data or {}, f"data of target '{name}'")
        values = {"name": name, "data": data or {}, "updated_at": _now()}
        with self._write() as conn:
            stmt = _upsert(conn, targets, values, ["name"], ["data", "updated_at"])
            conn.execute(stmt)

    def targets(self) -> dict[str, dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(sa.select(targets.c.name, targets.c.data).order_by(targets.c.name))
            return {r.name: dict(r.data or {}) for r in rows}

    def load(self) -> dict[str, dict[str, int]]:
        """Per target, how many migrations are in each state: one grouped query, however many there are."""
        query = sa.select(migrations.c.target, migrations.c.state, sa.func.count()).group_by(
            migrations.c.target, migrations.c.state
        )
        out: dict[str, dict[str, int]] = {}
        with self._read() as conn:
            for target, state, n in conn.execute(query):
                out.setdefault(target, {})[state] = int(n)
        return out

    # -- migrations --------------------------------------------------------------------------------

    def create(self, requests: list[MigrationRequest]) -> list[MigrationRecord]:
        """All or nothing. Raises BatchRejected (a ValueError) for a bad request, an unknown target or a
        name in use; default names are derived from the source and numbered on a clash (`db1-2`)."""
        for i, req in enumerate(requests):
            validate_request(req, i)
        if not requests:
            return []
        # Two servers deriving the same default name at once collide on the unique index: derive again.
        for attempt in range(5):
            try:
                return self._create_once(requests)
            except IntegrityError:
                if attempt == 4 or all(r.name for r in requests):
                    break
        raise BatchRejected(
            "name_taken",
            "another migration took one of these names while they were being created",
            "send the request again",
        )

    def _create_once(self, requests: list[MigrationRequest]) -> list[MigrationRecord]:
        now = _now()
        with self._write() as conn:
            self._check_targets(conn, requests)
            names = self._assign_names(conn, requests)
            rows = [_new_row(r, name, now) for r, name in zip(requests, names, strict=True)]
            conn.execute(sa.insert(migrations), rows)
            created = {"from": None, "to": State.QUEUED.value}
            conn.execute(
                sa.insert(events),
                [
                    {"migration_id": row["id"], "seq": 1, "at": now, "kind": "state",
                     "message": f"created in state {State.QUEUED.value}", "data": created}
                    for row in rows
                ],
            )  # fmt: skip
        return [_record_from_values(row) for row in rows]

    def _check_targets(self, conn: Connection, requests: Sequence[MigrationRequest]) -> None:
        wanted = {r.target.strip() for r in requests}
        known = set(conn.scalars(sa.select(targets.c.name).where(targets.c.name.in_(wanted))))
        unknown = sorted(wanted - known)
        if unknown:
            every = sorted(conn.scalars(sa.select(targets.c.name)))
            raise BatchRejected(
                "unknown_target",
                f"unknown target{'s' if len(unknown) > 1 else ''} {', '.join(repr(t) for t in unknown)}",
                f"known targets: {', '.join(every)}" if every else "no target is known yet: start an agent",
                {"unknown": unknown, "known": every},
            )

    def _assign_names(self, conn: Connection, requests: Sequence[MigrationRequest]) -> list[str]:
        given = [r.name for r in requests if r.name]
        repeated = sorted({n for n in given if given.count(n) > 1})
        taken = sorted(conn.scalars(sa.select(migrations.c.name).where(migrations.c.name.in_(given))))
        if repeated or taken:
            clash = repeated or taken
            raise BatchRejected(
                "name_taken",
                f"migration name{'s' if len(clash) > 1 else ''} {', '.join(repr(n) for n in clash)} "
                + ("given twice in this request" if repeated else "already in use"),
                "choose other names, or leave the name out to have one derived from the source",
                {"names": clash},
            )
        used: set[str] = set(given)
        names: list[str] = []
        bases: dict[str, set[str]] = {}
        for r in requests:
            if r.name:
                names.append(r.name)
                continue
            base = database_name(r.database) if r.database else base_name(r.source)
            if base not in bases:
                bases[base] = set(
                    conn.scalars(
                        sa.select(migrations.c.name).where(
                            (migrations.c.name == base)
                            | migrations.c.name.startswith(f"{base}-", autoescape=True)
                        )
                    )
                )
            name, n = base, 1
            while name in used or name in bases[base]:
                n += 1
                name = f"{base}-{n}"
            used.add(name)
            names.append(name)
        return names

    def get(self, migration_id: str) -> MigrationRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(migrations).where(migrations.c.id == migration_id)).one_or_none()
            return _record(row) if row is not None else None

    def find_refs(self, refs: list[str]) -> dict[str, MigrationRecord]:
        """The migrations `refs` name (each an id or a name), in one query: {ref: record} for each ref
        that names one. An id wins over a name that happens to look the same."""
        if not refs:
            return {}
        query = sa.select(migrations).where(migrations.c.id.in_(refs) | migrations.c.name.in_(refs))
        with self._read() as conn:
            records = [_record(row) for row in conn.execute(query)]
        by_id = {r.id: r for r in records}
        by_name = {r.name: r for r in records}
        return {ref: r for ref in refs if (r := by_id.get(ref) or by_name.get(ref)) is not None}

    def get_by_name(self, name: str) -> MigrationRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(migrations).where(migrations.c.name == name)).one_or_none()
            return _record(row) if row is not None else None

    def find(self, state: State | None = None, target: str | None = None) -> list[MigrationRecord]:
        query = sa.select(migrations).order_by(migrations.c.created_at, migrations.c.name)
        if state is not None:
            query = query.where(migrations.c.state == state.value)
        if target is not None:
            query = query.where(migrations.c.target == target)
        with self._read() as conn:
            return [_record(row) for row in conn.execute(query)]

    def set_state(
        self,
        migration_id: str,
        state: State,
        status: dict[str, Any] | None = None,
        error: str | None = None,
        *,
        expected: State | None = None,
    ) -> MigrationRecord:
        """Moves along TRANSITIONS only (InvalidTransition otherwise) and records a "state" event for a
        change, in the same transaction. Failed to Queued is a retry: the attempt counts up, the error
        is cleared (it stays in the event log). `expected`: a compare-and-set, the move is made only from
        that state (StateConflict otherwise), so of two callers racing for one move exactly one makes it.

        Secrets in `status` and `error` (a source's password in an error message) are masked on the way
        in: the store keeps a source as given, and nothing else."""
        if status is not None:
            _check_json(status, f"status of migration '{migration_id}'")
            status = redact_value(status)
        if error is not None:
            error = redact_text(error)
        with self._write() as conn:
            query = sa.select(migrations.c.state).where(migrations.c.id == migration_id).with_for_update()
            current_text = conn.scalar(query)
            if current_text is None:
                raise UnknownMigration(migration_id)
            current = State(current_text)
            if expected is not None and current is not expected:
                raise StateConflict(migration_id, current, expected, state)
            transition(current, state)
            values: dict[str, Any] = {"updated_at": _now()}
            if status is not None:
                values["status"] = status
            if error is not None:
                values["error"] = error
            if state is not current:
                values["state"] = state.value
                if current is State.FAILED and state is State.QUEUED:
                    values["attempt"] = migrations.c.attempt + 1
                    values["error"] = None
            update = sa.update(migrations).where(migrations.c.id == migration_id).values(**values)
            row = conn.execute(update.returning(*migrations.c)).one()
            if state is not current:
                data: dict[str, Any] = {"from": current.value, "to": state.value}
                if error is not None:
                    data["error"] = error
                self._append(conn, migration_id, "state", f"{current.value} -> {state.value}", data)
            return _record(row)

    def set_status(self, migration_id: str, status: dict[str, Any]) -> None:
        _check_json(status, f"status of migration '{migration_id}'")
        status = redact_value(status)
        with self._write() as conn:
            update = sa.update(migrations).where(migrations.c.id == migration_id)
            done = conn.execute(update.values(status=status, updated_at=_now()))
            if done.rowcount == 0:
                raise UnknownMigration(migration_id)

    # -- events ------------------------------------------------------------------------------------

    def append_event(
        self, migration_id: str, kind: str, message: str, data: dict[str, Any] | None = None
    ) -> Event:
        """kind: "step" (data: command, started_at, finished_at, seconds), "info" or "error"."""
        if kind not in EVENT_KINDS:
            hint = "state changes are recorded by set_state" if kind == "state" else ""
            raise ValueError(f"event kind '{kind}' is not one of {', '.join(sorted(EVENT_KINDS))}. {hint}")
        _check_json(data or {}, f"data of a '{kind}' event")
        with self._write() as conn:
            return self._append(conn, migration_id, kind, message, data or {})

    def append_events(self, items: Sequence[tuple[str, str, str, dict[str, Any]]]) -> list[Event]:
        """Many events (migration id, kind, message, data) in one transaction: a cutover of thousands."""
        for _, kind, _, data in items:
            if kind not in EVENT_KINDS:
                raise ValueError(f"event kind '{kind}' is not one of {', '.join(sorted(EVENT_KINDS))}")
            _check_json(data, f"data of a '{kind}' event")
        with self._write() as conn:
            return [self._append(conn, mid, kind, message, data) for mid, kind, message, data in items]

    def _append(self, conn: Connection, migration_id: str, kind: str, message: str,
                data: dict[str, Any]) -> Event:  # fmt: skip
        # The counter lives on the migration's row: the row lock orders this log's appends, and only it.
        bump = (
            sa.update(migrations)
            .where(migrations.c.id == migration_id)
            .values(last_seq=migrations.c.last_seq + 1)
            .returning(migrations.c.last_seq)
        )
        seq = conn.scalar(bump)
        if seq is None:
            raise UnknownMigration(migration_id)
        message, data = redact_text(message), redact_value(data)
        at = _now()
        conn.execute(
            sa.insert(events).values(
                migration_id=migration_id, seq=seq, at=at, kind=kind, message=message, data=data
            )
        )
        return Event(migration_id, seq, at, kind, message, data)

    def events(self, migration_id: str, after_seq: int = 0) -> list[Event]:
        query = (
            sa.select(events)
            .where(events.c.migration_id == migration_id, events.c.seq > after_seq)
            .order_by(events.c.seq)
        )
        with self._read() as conn:
            return [_event(row) for row in conn.execute(query)]

    # -- snapshots ---------------------------------------------------------------------------------

    def save_snapshot(self, migration_id: str, kind: str, data: Any) -> None:
        """Keep the latest JSON snapshot of one kind ("catalog", "plan", ...) for a migration."""
        _check_json(data, f"'{kind}' snapshot of migration '{migration_id}'")
        with self._write() as conn:
            if conn.scalar(sa.select(migrations.c.id).where(migrations.c.id == migration_id)) is None:
                raise UnknownMigration(migration_id)
            values = {"migration_id": migration_id, "kind": kind, "data": data, "saved_at": _now()}
            conn.execute(_upsert(conn, snapshots, values, ["migration_id", "kind"], ["data", "saved_at"]))

    def snapshot(self, migration_id: str, kind: str) -> Any | None:
        query = sa.select(snapshots.c.data).where(
            snapshots.c.migration_id == migration_id, snapshots.c.kind == kind
        )
        with self._read() as conn:
            return conn.scalar(query)


def _new_row(req: MigrationRequest, name: str, now: datetime) -> dict[str, Any]:
    return {
        "id": new_id(), "name": name, "source": req.source.strip(), "target": req.target.strip(),
        "mode": req.mode, "state": State.QUEUED.value, "last_backup": req.last_backup, "status": {},
        "error": None, "attempt": 1, "created_at": now, "updated_at": now,
        "last_seq": 1,  # the "created" event below
        "database": req.database,
    }  # fmt: skip


def _record_from_values(values: dict[str, Any]) -> MigrationRecord:
    return MigrationRecord(
        id=values["id"], name=values["name"], source=values["source"], target=values["target"],
        mode=values["mode"], state=State(values["state"]), last_backup=values["last_backup"],
        status=dict(values["status"]), created_at=values["created_at"], updated_at=values["updated_at"],
        error=values["error"], attempt=values["attempt"], database=values["database"],
    )  # fmt: skip


def _upsert(conn: Connection, table: sa.Table, values: dict[str, Any], keys: list[str],
            update: list[str]) -> sa.Executable:  # fmt: skip
    """INSERT ... ON CONFLICT DO UPDATE, in the dialect's own syntax (both speak it)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(table).values(**values)
        return pg.on_conflict_do_update(index_elements=keys, set_={k: pg.excluded[k] for k in update})
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    lite = sqlite_insert(table).values(**values)
    return lite.on_conflict_do_update(index_elements=keys, set_={k: lite.excluded[k] for k in update})


if TYPE_CHECKING:

    def _implements_the_protocol(store: SqlStateStore) -> StateStore:
        return store  # mypy checks SqlStateStore against the StateStore protocol here
