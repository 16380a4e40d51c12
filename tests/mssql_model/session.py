"""Running one batch for one session: every statement other than SELECT and RESTORE is handled here.

Each statement ends with a DONE token (MORE while statements follow, COUNT for result sets, ERROR when
it failed); a failed statement does not stop the batch, as with SQL Server's statement-level errors,
but a syntax error anywhere stops the whole batch before anything runs.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Sequence

from tests.mssql_model import query, runner, tokens
from tests.mssql_model.catalog import CredentialRow, OutsideRoot, now_text
from tests.mssql_model.errors import Message, SqlError, fail, message
from tests.mssql_model.instance import Instance, Session
from tests.mssql_model.parser import (
    AlterDatabase,
    CheckDb,
    Credential,
    DropDatabase,
    Exec,
    Kill,
    Print,
    Restore,
    Select,
    SetOption,
    Statement,
    Transaction,
    Use,
    WaitFor,
    parse,
)
from tests.mssql_model.tds import Output, poll_interrupt
from tests.mssql_model.tokens import INT, ColType
from tests.mssql_model.views import all_databases

PROC = -2  # a statement that answered as a procedure (DONEINPROC, RETURNSTATUS, DONEPROC)
LOCK_WAIT_SECONDS = 3.0


class Connection:
    """The reply side of one session: implements runner.Reply over the TDS writer."""

    def __init__(self, instance: Instance, session: Session, out: Output, tds: int) -> None:
        self.instance = instance
        self.session = session
        self.out = out
        self.tds = tds

    def info(self, msg: Message) -> None:
        self.out.add(tokens.message_token(msg, self.instance.config.server_name, self.tds))
        self.out.flush()

    def result(self, columns: list[tuple[str, ColType]], rows: Sequence[Sequence[object]]) -> None:
        self.out.add(tokens.colmetadata(columns, self.tds))
        for values in rows:
            self.out.add(tokens.row(columns, list(values), self.tds))
        self.count = len(rows)

    def pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            poll_interrupt(self.session.sock)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.02))

    # -- batches ------------------------------------------------------------------------------------------
    def run_batch(self, text: str) -> None:
        try:
            statements = parse(text)
        except SqlError as exc:
            for msg in exc.messages:
                self.info(msg)
            self.out.add(tokens.done(tokens.DONE_ERROR, 0, self.tds))
            self.out.end()
            return
        if not statements:
            self.out.add(tokens.done(tokens.DONE_FINAL, 0, self.tds))
        for index, stmt in enumerate(statements):
            more = tokens.DONE_MORE if index < len(statements) - 1 else 0
            self.count = -1
            try:
                self.statement(stmt)
                status = more | (tokens.DONE_COUNT if self.count >= 0 else 0)
            except SqlError as exc:
                for msg in exc.messages:
                    self.info(msg)
                status = more | tokens.DONE_ERROR
            if self.count == PROC:
                self.out.add(tokens.done(status, 0, self.tds, token=tokens.DONEPROC))
            else:
                self.out.add(tokens.done(status, max(self.count, 0), self.tds))
        self.out.end()

    def statement(self, stmt: Statement) -> None:
        session, instance = self.session, self.instance
        session.request_start = None
        if isinstance(stmt, Select):
            columns, rows = query.run_select(instance, session, stmt.text)
            self.result(columns, rows)
            if session.implicit_transactions and session.trancount == 0:
                session.trancount = 1
        elif isinstance(stmt, Restore):
            runner.run(self, instance, session, stmt)
        elif isinstance(stmt, Use):
            self.use(stmt.database)
        elif isinstance(stmt, Credential):
            self.credential(stmt)
        elif isinstance(stmt, AlterDatabase):
            self.alter(stmt)
        elif isinstance(stmt, DropDatabase):
            self.drop(stmt)
        elif isinstance(stmt, CheckDb):
            self.checkdb(stmt)
        elif isinstance(stmt, Exec):
            self.exec(stmt)
        elif isinstance(stmt, SetOption):
            if stmt.option == "IMPLICIT_TRANSACTIONS":
                session.implicit_transactions = stmt.value == "ON"
        elif isinstance(stmt, Transaction):
            self.transaction(stmt.action)
        elif isinstance(stmt, Print):
            self.info(Message(0, stmt.value, 0))
        elif isinstance(stmt, Kill):
            self.kill(stmt.spid)
        elif isinstance(stmt, WaitFor):
            self.pause(stmt.seconds)

    # -- statements ---------------------------------------------------------------------------------------
    def open_database(self, name: str) -> str:
        """Check that this session may enter `name`; returns its spelling in the catalog."""
        instance, session = self.instance, self.session
        db = next((d for d in all_databases(instance) if d.name.lower() == name.lower()), None)
        if db is None:
            raise fail(911, name)
        if db.state == "RESTORING" or instance.busy.get(db.name.lower()) is not None:
            raise fail(927, db.name)
        if db.state == "OFFLINE":
            raise fail(942, db.name)
        others = instance.users_of(db.name, but=session.spid)
        if db.user_access == "SINGLE_USER" and others:
            raise fail(924, db.name)
        if (
            db.user_access == "RESTRICTED_USER"
            and not session.has_role("dbcreator")
            and db.owner_sid != (session.login.sid)
        ):
            raise fail(927, db.name)
        return db.name

    def use(self, name: str) -> None:
        new = self.open_database(name)
        old = self.session.database
        self.session.database = new
        self.out.add(tokens.env_database(new, old))
        self.info(message(5701, new))

    def credential(self, stmt: Credential) -> None:
        instance, session = self.instance, self.session
        # CREATE, ALTER and DROP CREDENTIAL need ALTER ANY CREDENTIAL (sysadmin holds it); without it,
        # 15247 (https://learn.microsoft.com/sql/t-sql/statements/create-credential-transact-sql).
        if not session.has_permission("ALTER ANY CREDENTIAL"):
            raise fail(15247)
        with instance.lock:
            state = instance.state
            found = next((c for c in state.credentials if c.name.lower() == stmt.name.lower()), None)
            if stmt.action == "CREATE":
                if found is not None:
                    raise fail(15025, stmt.name)
                state.credentials.append(
                    CredentialRow(
                        state.next_credential_id,
                        stmt.name,
                        stmt.identity or "",
                        stmt.secret or "",
                        now_text(),
                    )
                )
                state.next_credential_id += 1
            elif found is None:
                raise fail(15151, "credential", stmt.name)
            elif stmt.action == "DROP":
                state.credentials.remove(found)
            else:
                found.identity = stmt.identity or found.identity
                found.secret = stmt.secret if stmt.secret is not None else found.secret
            instance.save()

    def _evict(self, name: str, termination: str | None) -> None:
        """Other sessions in `name` must go: killed with ROLLBACK IMMEDIATE, else waited for (5061)."""
        deadline = time.monotonic() + (0 if termination else LOCK_WAIT_SECONDS)
        while True:
            others = self.instance.users_of(name, but=self.session.spid)
            if not others:
                return
            if termination == "ROLLBACK IMMEDIATE":
                for other in others:
                    kill_session(other)
                    other.database = "master"
                continue
            if time.monotonic() >= deadline:
                raise fail(5061, name)
            self.pause(0.05)

    def _owned_database(self, name: str, number: int) -> str:
        with self.instance.lock:
            db = self.instance.state.database(name)
        if db is None:
            raise fail(number, name)
        if not self.session.has_role("dbcreator") and db.owner_sid != self.session.login.sid:
            raise fail(number, name)
        return db.name

    def alter(self, stmt: AlterDatabase) -> None:
        instance = self.instance
        name = self._owned_database(stmt.database, 5011)
        with instance.lock:
            db = instance.state.database(name)
            assert db is not None
            if db.state == "RESTORING" or instance.busy.get(name.lower()) is not None:
                raise fail(5052, "RESTORING")
            others = instance.users_of(name, but=self.session.spid)
            if db.user_access == "SINGLE_USER" and stmt.termination is None and others:
                raise fail(924, name)
        if stmt.setting in ("SINGLE_USER", "RESTRICTED_USER", "OFFLINE"):
            self._evict(name, stmt.termination)
        with instance.lock:
            db = instance.state.database(name)
            assert db is not None
            if stmt.setting in ("SINGLE_USER", "RESTRICTED_USER", "MULTI_USER"):
                db.user_access = stmt.setting
            elif stmt.setting == "OFFLINE":
                db.state = "OFFLINE"
            elif stmt.setting == "ONLINE":
                db.state = "ONLINE" if db.state == "OFFLINE" else db.state
            elif stmt.setting in ("READ_ONLY", "READ_WRITE"):
                db.is_read_only = stmt.setting == "READ_ONLY"
            elif stmt.setting == "RECOVERY" and stmt.value:
                db.recovery_model = stmt.value
            instance.save()

    def drop(self, stmt: DropDatabase) -> None:
        instance = self.instance
        for raw in stmt.databases:
            with instance.lock:
                exists = instance.state.database(raw) is not None
            if not exists and stmt.if_exists:
                continue
            name = self._owned_database(raw, 3701)
            with instance.lock:
                if instance.busy.get(name.lower()) is not None or instance.users_of(name):
                    raise fail(3702, name)
                db = instance.state.databases.pop(name.lower())
                for path in [f.physical_name for f in db.files] + (
                    [db.standby_file] if db.standby_file else []
                ):
                    try:
                        host = instance.fs.host(path)
                    except OutsideRoot:
                        continue
                    if host.is_file():
                        host.unlink()
                instance.save()

    def checkdb(self, stmt: CheckDb) -> None:
        target = stmt.database or self.session.database
        if target.startswith("#"):
            wanted = target[1:]
            found = next((d for d in all_databases(self.instance) if str(d.database_id) == wanted), None)
            if found is None:
                raise fail(2520, target[1:])
            target = found.name
        name = self.open_database(target)
        if not stmt.no_infomsgs:
            self.info(message(2536, name))
            self.info(message(8989, 0, 0, name))
            self.info(message(2528))

    def exec(self, stmt: Exec) -> None:
        if stmt.procedure != "xp_fileexist" or not stmt.args:
            raise fail(2812, stmt.procedure)
        path = str(stmt.args[0])
        try:
            host = self.instance.fs.host(path)
            row = [int(host.is_file()), int(host.is_dir()), int(host.parent.is_dir())]
        except OutsideRoot:
            row = [0, 0, 0]
        columns = [("File Exists", INT), ("File is a Directory", INT), ("Parent Directory Exists", INT)]
        self.result(columns, [row])
        self.out.add(tokens.done(tokens.DONE_COUNT | tokens.DONE_MORE, 1, self.tds, token=tokens.DONEINPROC))
        self.out.add(tokens.returnstatus(0))
        self.count = PROC

    def transaction(self, action: str) -> None:
        session = self.session
        if action == "BEGIN":
            session.trancount += 1
        elif session.trancount == 0:
            raise fail(3902 if action == "COMMIT" else 3903)
        elif action == "COMMIT":
            session.trancount -= 1
        else:
            session.trancount = 0

    def kill(self, spid: int) -> None:
        if not self.session.has_role():
            raise fail(6102)
        if spid == self.session.spid:
            raise fail(6104)
        with self.instance.lock:
            target = self.instance.sessions.get(spid)
        if target is None:
            raise fail(6106, spid)
        kill_session(target)


def kill_session(target: Session) -> None:
    target.killed = True
    with contextlib.suppress(OSError):
        target.sock.shutdown(socket.SHUT_RDWR)
