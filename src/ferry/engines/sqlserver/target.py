"""What Ferry does on a SQL Server target, statement by statement: read its facts and a database's
position, probe that it reads a backup (RESTORE LABELONLY), create a SAS credential, run a RESTORE with
live STATS progress, recover, and look at the database once it is online.

Every statement is built by tsql.py's quoting (identifiers in brackets with `]` doubled, literals as
N'...' with `'` doubled), so any database or file name is safe. Secrets (the SAS token) travel only in the
statement that needs them and never into an error message: a failing CREATE CREDENTIAL is reported
without its text.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ferry.core.errors import FerryError
from ferry.core.redact import redact_text
from ferry.engines.sqlserver import facts as f
from ferry.engines.sqlserver.connection import Connection, ServerMessage, SqlError
from ferry.engines.sqlserver.devices import Credential
from ferry.engines.sqlserver.facts import Position, Probe, TargetFacts
from ferry.engines.sqlserver.tsql import Device, quote_ident, quote_literal, recover_statement

_PERCENT = re.compile(r"^(\d{1,3}) percent processed")
PROBE_ROUNDS = 8  # xp_fileexist rounds while relocated names are tried: each round probes every new name


class CredentialRefused(FerryError):
    """The target refused to create or alter a credential: its rights decide, not time."""

    retryable = False


class Target:
    """One connection's worth of work on the target instance."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.name = str(conn.url)

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    # -- reading ------------------------------------------------------------------------------------------
    def facts(self, probes: Sequence[str] = ()) -> TargetFacts:
        return f.parse_facts(self.conn.execute(f.facts_batch(probes), "reading the target's facts"), probes)

    def probe(self, paths: Sequence[str]) -> dict[str, Probe]:
        """Whether each path exists on the target (xp_fileexist). A login that may not run it (it is not
        granted to public on every build) gets an empty answer: the restore then finds out itself."""
        if not paths:
            return {}
        try:
            results = self.conn.execute(f.probe_batch(paths), "checking which files exist")
        except SqlError:
            return {}
        return f.parse_probes(paths, results)

    def position(self, database: str) -> Position:
        return f.parse_position(self.conn.execute(f.position_batch(database), f"reading [{database}]"))

    def device_facts(self, major: int) -> f.DeviceFacts:
        """The platform and the credential rights, each asked on its own: a build without
        sys.dm_os_host_info (2016 and older) or a login that may not ask loses only that fact."""
        try:
            platform = f.parse_platform(
                self.conn.execute(f.HOST_PLATFORM, "reading the host platform"), major
            )
        except SqlError:
            platform = "Windows" if 0 < major < 14 else None
        try:
            alter, view = f.parse_credential_rights(self.conn.execute(f.CREDENTIAL_RIGHTS, "reading rights"))
        except SqlError:
            alter, view = False, False
        return f.DeviceFacts(platform, alter, view)

    def readable(
        self, devices: Sequence[Device], media_password: str | None = None, credential: str | None = None
    ) -> str | None:
        """None if the target reads these backup files (RESTORE LABELONLY over all stripes, with the
        restore's own CREDENTIAL and MEDIAPASSWORD), else its words for why not."""
        sql = "RESTORE LABELONLY FROM " + ", ".join(d.clause() for d in devices)
        options = []
        if credential is not None:
            options.append(f"CREDENTIAL = {quote_literal(credential)}")
        if media_password is not None:
            options.append(f"MEDIAPASSWORD = {quote_literal(media_password)}")
        if options:
            sql += " WITH " + ", ".join(options)
        try:
            self.conn.execute(sql, "RESTORE LABELONLY")
        except SqlError as exc:
            texts = [m.text for m in exc.messages if m.severity > 10 and "abnormally" not in m.text]
            return redact_text(" ".join(texts) or str(exc))
        return None

    # -- changing -----------------------------------------------------------------------------------------
    def put_credential(self, credential: Credential, secret: str, *, alter: bool) -> None:
        """CREATE (or ALTER) CREDENTIAL with its secret. A refusal is reported without the statement,
        which holds the secret, and is not worth retrying: the login's rights do not change by themselves."""
        verb = "ALTER" if alter else "CREATE"
        try:
            self.conn.execute(credential.statement(secret, alter=alter), f"{verb} CREDENTIAL")
        except SqlError as exc:
            raise CredentialRefused(
                f"cannot {verb.lower()} the credential [{credential.name}] on {self.name} (error "
                f"{exc.number}); running again will not help",
                "the login needs ALTER ANY CREDENTIAL (or sysadmin); or run on the target: "
                f"{credential.shown}",
            ) from None

    def close_sessions(self, database: str) -> None:
        """--force: every other session out of the database before it is replaced (rolled back)."""
        self.conn.execute(
            f"ALTER DATABASE {quote_ident(database)} SET SINGLE_USER WITH ROLLBACK IMMEDIATE",
            f"closing the sessions of [{database}]",
        )

    def restore(
        self, statement: str, what: str, on_percent: Callable[[int], None] | None = None
    ) -> list[ServerMessage]:
        """Run one RESTORE; `on_percent` hears each STATS message as it arrives."""

        def heard(message: ServerMessage) -> None:
            match = _PERCENT.match(message.text)
            if match and on_percent is not None:
                on_percent(min(100, int(match.group(1))))

        self.conn.execute(statement, what, on_message=heard)
        return self.conn.messages

    def recover(self, database: str) -> None:
        self.conn.execute(recover_statement(database), f"RESTORE DATABASE [{database}] WITH RECOVERY")

    def checkdb(self, database: str) -> list[str]:
        """DBCC CHECKDB: the errors it reports (empty: the database is consistent)."""
        self.conn.execute(f"DBCC CHECKDB ({quote_ident(database)}) WITH NO_INFOMSGS", "DBCC CHECKDB")
        return [m.text for m in self.conn.messages if m.severity > 10]

    def orphaned_users(self, database: str) -> list[str] | None:
        """SQL users of the database whose login does not exist on this instance (they cannot log in until
        mapped with ALTER USER ... WITH LOGIN). None when the target cannot answer."""
        db = quote_ident(database)
        sql = (
            f"SELECT dp.name FROM {db}.sys.database_principals AS dp "
            "LEFT JOIN sys.server_principals AS sp ON sp.sid = dp.sid "
            "WHERE dp.type IN ('S', 'U', 'G') AND dp.sid IS NOT NULL AND sp.sid IS NULL "
            "AND dp.principal_id > 4 AND dp.authentication_type_desc <> N'NONE'"
        )
        try:
            results = self.conn.execute(sql, "listing orphaned users")
        except SqlError:
            return None
        return sorted(str(r[0]) for r in results[0].rows) if results else []


def wait_backoff(attempt: int) -> float:
    """Seconds between looks at a target that is not ready: 0.5, 1, 2, 4... up to 30."""
    return float(min(30.0, 0.5 * (2 ** min(attempt, 6))))


@dataclass
class Throttle:
    """Lets a report through at most every `seconds` (the last one always goes)."""

    seconds: float = 0.5
    last: float = 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.last = now
            return True
        return False
