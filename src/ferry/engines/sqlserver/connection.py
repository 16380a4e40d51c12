"""SQL Server targets as Ferry reaches them: the `mssql://USER@HOST[:PORT][/INSTANCE]` name, where the
password comes from, and one TDS connection through pymssql.

Why pymssql: it installs from PyPI with FreeTDS built in (no ODBC driver to install on the target host),
and its message handler (`conn._conn.set_msghandler`) is called as each server message arrives, so
RESTORE's STATS messages ("40 percent processed.") give live progress while `execute` blocks.

How pymssql reports a failed statement (rules doc §5): the exception's first argument is the number of
the most severe message, often the closing 3013 "RESTORE DATABASE is terminating abnormally"; the specific
error (3201, 4305, 262...) may only have reached the message handler, without its number. `SqlError`
therefore carries every message text of the statement and the number recognised from those texts.

Connections are in autocommit mode: pymssql otherwise opens a transaction at once, and RESTORE cannot run
inside one (3021). The password never appears in a message, an error, an event or Prepared.state.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ferry.core.errors import FerryError, UsageError

SCHEME = "mssql"
DEFAULT_PORT = 1433
PASSWORD_ENV = "FERRY_MSSQL_PASSWORD"
CREDENTIALS_ENV = "FERRY_MSSQL_CREDENTIALS"
LOGIN_TIMEOUT = 15  # seconds: an unreachable server fails in this time, it never hangs Ferry


@dataclass(frozen=True)
class TargetUrl:
    """One SQL Server instance: `mssql://USER@HOST[:PORT][/INSTANCE]`. A named instance without a port is
    found through the SQL Server Browser (UDP 1434); with a port, the instance name is checked against
    the server's own (SERVERPROPERTY('InstanceName')), so two instances on one host are never confused."""

    user: str
    host: str
    port: int | None = None
    instance: str | None = None

    @staticmethod
    def parse(text: str) -> TargetUrl:
        hint = "write the target as mssql://USER@HOST[:PORT][/INSTANCE], e.g. mssql://ferry@sql01:1433/SALES"
        parts = urlsplit(text.strip())
        if parts.scheme.lower() != SCHEME:
            raise UsageError(f"target '{redact(text)}' is not an mssql:// URL", hint)
        if parts.password is not None:
            raise UsageError(
                "the target URL holds a password; Ferry never takes one on the command line",
                f"remove it and set {PASSWORD_ENV} (or a credentials file, see docs/engines.md)",
            )
        if not parts.username or not parts.hostname:
            raise UsageError(f"target '{text}' names no user or no host", hint)
        try:
            port = parts.port
        except ValueError:
            raise UsageError(f"target '{text}' has a port that is not from 1 to 65535", hint) from None
        instance = unquote(parts.path.strip("/")) or None
        if instance is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$#]{0,15}", instance):
            raise UsageError(
                f"target '{text}' names the instance '{instance}', which is not a SQL Server instance name",
                "instance names are up to 16 letters, digits, _, $ or #, starting with a letter or _",
            )
        if parts.query or parts.fragment:
            raise UsageError(f"target '{text}' has a query or fragment Ferry does not read", hint)
        return TargetUrl(unquote(parts.username), parts.hostname, port, instance)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"{SCHEME}://{self.user}@{host}{port}" + (f"/{self.instance}" if self.instance else "")

    @property
    def server(self) -> str:
        """pymssql's `server`: HOST, or HOST\\INSTANCE when the Browser must find the instance's port."""
        if self.instance and not self.port:
            return f"{self.host}\\{self.instance}"
        return self.host

    @property
    def key(self) -> str:
        """A name for this instance safe in file names and environment variables: HOST_PORT_INSTANCE."""
        port = self.port or (0 if self.instance else DEFAULT_PORT)
        raw = f"{self.host}_{port}" + (f"_{self.instance}" if self.instance else "")
        return re.sub(r"[^A-Za-z0-9]+", "_", raw).strip("_").upper()


def redact(text: str) -> str:
    """`text` with any password in a URL's user part replaced: safe to print."""
    return re.sub(r"(//[^/@:\s]*):[^/@\s]*@", r"\1:***@", text)


def password_for(
    url: TargetUrl,
    options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The login's password, first found of: the variable the target's options name (`password_env`),
    FERRY_MSSQL_PASSWORD_<HOST_PORT_INSTANCE>, FERRY_MSSQL_PASSWORD, then a credentials file
    (`credentials_file` option, FERRY_MSSQL_CREDENTIALS, ~/.config/ferry/mssql-credentials) whose lines
    are `mssql://USER@HOST[:PORT][/INSTANCE] PASSWORD`."""
    env = os.environ if environ is None else environ
    opts = options or {}
    names = [str(opts["password_env"])] if opts.get("password_env") else []
    names += [f"{PASSWORD_ENV}_{url.key}", PASSWORD_ENV]
    for name in names:
        if env.get(name):
            return env[name]
    file = opts.get("credentials_file") or env.get(CREDENTIALS_ENV)
    path = Path(file) if file else Path.home() / ".config" / "ferry" / "mssql-credentials"
    found = _from_file(path, url)
    if found is not None:
        return found
    raise UsageError(
        f"no password for {url}",
        f"set {names[0]} or {PASSWORD_ENV}, or add a line '{url} PASSWORD' to {path} (mode 0600)",
    )


def _from_file(path: Path, url: TargetUrl) -> str | None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, secret = line.strip().partition(" ")
        if not name or name.startswith("#") or not secret.strip():
            continue
        try:
            if TargetUrl.parse(name) == url:
                return secret.strip()
        except UsageError:
            continue
    return None


# -- errors ----------------------------------------------------------------------------------------------

# Message templates of errors Ferry acts on (Microsoft's error tables, rules doc §3): pymssql hands the
# handler the text only, so the number is recognised from it.
_KNOWN = (
    (4326, re.compile(r"which is too early to apply to the database")),
    (4305, re.compile(r"which is too recent to apply to the database")),
    (4330, re.compile(r"on a recovery path that is inconsistent")),
    (4319, re.compile(r"previous restore operation was interrupted", re.I)),
    (3101, re.compile(r"Exclusive access could not be obtained")),
    (924, re.compile(r"is already open and can only have one user at a time")),
    (3110, re.compile(r"User does not have permission to RESTORE")),
    (262, re.compile(r"permission denied in database", re.I)),
    (3201, re.compile(r"Cannot open backup device")),
    (3169, re.compile(r"That version is incompatible with this server")),
    (3154, re.compile(r"holds a backup of a database other than the existing")),
    (3159, re.compile(r"tail of the log for the database")),
    (3257, re.compile(r"insufficient free space on disk volume")),
    (5133, re.compile(r"Directory lookup for the file")),
    (3142, re.compile(r"cannot be restored over the existing")),
    (5170, re.compile(r"because it already exists")),
    (1834, re.compile(r"cannot be overwritten\. +It is being used by database")),
    (3117, re.compile(r"no files are ready to rollforward")),
    (3136, re.compile(r"database has not been restored to the correct earlier state")),
    (3153, re.compile(r"already fully recovered")),
    (3118, re.compile(r"database .* does not exist", re.I)),
)
# Errors a later attempt can get past: the server or the database is busy, the connection dropped.
_TRANSIENT = {3101, 924, 927, 922, 1205, 4319}


def known_number(text: str) -> int | None:
    return next((number for number, pattern in _KNOWN if pattern.search(text)), None)


@dataclass(frozen=True)
class ServerMessage:
    severity: int
    text: str

    @property
    def number(self) -> int | None:
        return known_number(self.text)


class SqlError(FerryError):
    """A statement the target refused. `number`: the specific error recognised in its messages, else the
    number pymssql reported; `messages`: every error text of the statement, in order."""

    def __init__(
        self, target: str, what: str, number: int, messages: Sequence[ServerMessage], hint: str = ""
    ) -> None:
        texts = [m.text for m in messages if m.severity > 10] or [f"error {number}"]
        super().__init__(f"{what} on {target} failed: {' '.join(texts)}", hint or _hint(number))
        self.number = number
        self.messages = tuple(messages)
        self.retryable = number in _TRANSIENT

    @property
    def numbers(self) -> set[int]:
        found = {m.number for m in self.messages if m.number is not None}
        return found | {self.number}


def _hint(number: int) -> str:
    return {
        3101: "someone else uses the database: Ferry tries again; close their sessions to go faster",
        3201: "the SQL Server service account must be able to read the backup files at that path "
        "(map paths with --backup-path-as LOCAL=TARGET)",
        262: "the login needs the dbcreator or sysadmin server role",
        3110: "the login needs the dbcreator or sysadmin server role",
        3169: "restore onto a SQL Server as new as the source or newer",
        4305: "a log backup is missing between the target's position and this one: find it",
        3257: "free space on the target volume, or give --data-dir/--log-dir on another volume",
    }.get(number, "the messages above are SQL Server's own; fix what they name and run Ferry again")


class TargetUnreachable(FerryError):
    """The instance did not answer (down, wrong host or port, firewall): worth retrying."""


class LoginFailed(UsageError):
    """The instance answered and refused the login: no retry can fix a wrong user or password."""


# -- the connection --------------------------------------------------------------------------------------

Row = tuple[Any, ...]


@dataclass
class ResultSet:
    columns: list[str]
    rows: list[Row] = field(default_factory=list)

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


MessageSink = Callable[[ServerMessage], None]


class Connection:
    """One autocommit TDS session on a target instance."""

    def __init__(self, url: TargetUrl, raw: Any) -> None:
        self.url = url
        self._raw = raw
        self._messages: list[ServerMessage] = []
        self._sink: MessageSink | None = None
        raw._conn.set_msghandler(self._on_message)

    @staticmethod
    def open(url: TargetUrl, password: str, login_timeout: int = LOGIN_TIMEOUT) -> Connection:
        import pymssql  # the driver loads only when a SQL Server target is used

        opener: Any = pymssql.connect
        where: dict[str, Any] = {"server": url.server}
        if url.port or not url.instance:
            where["port"] = str(url.port or DEFAULT_PORT)
        try:
            raw = opener(
                **where,
                user=url.user,
                password=password,
                autocommit=True,
                login_timeout=login_timeout,
                timeout=0,  # RESTORE runs as long as it must; progress arrives through the handler
                appname="ferry",
                charset="UTF-8",
            )
        except pymssql.Error as exc:
            text = _exception_text(exc)
            if "Login failed" in text:
                raise LoginFailed(
                    f"{url} refused the login of '{url.user}'",
                    "check the user and its password (FERRY_MSSQL_PASSWORD or the credentials file)",
                ) from None
            raise TargetUnreachable(
                f"cannot reach {url}: {_first_line(text)}",
                "check the host, port and instance name, that SQL Server runs and accepts TCP/IP, and "
                "that no firewall is in the way",
            ) from None
        return Connection(url, raw)

    def _on_message(self, state: int, severity: int, server: Any, proc: Any, line: int, text: Any) -> None:
        value = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        message = ServerMessage(int(severity), value.strip())
        self._messages.append(message)
        if self._sink is not None:
            self._sink(message)

    def execute(self, sql: str, what: str = "", on_message: MessageSink | None = None) -> list[ResultSet]:
        """Run one batch; return its result sets. Raises SqlError with every message of the batch."""
        import pymssql

        self._messages = []
        self._sink = on_message
        cursor = self._raw.cursor()
        results: list[ResultSet] = []
        try:
            cursor.execute(sql)
            while True:
                if cursor.description:
                    columns = [str(d[0]) for d in cursor.description]
                    results.append(ResultSet(columns, [tuple(r) for r in cursor.fetchall()]))
                if not cursor.nextset():
                    break
        except pymssql.Error as exc:
            raise self.error(exc, what or sql.split("\n", 1)[0][:60]) from None
        finally:
            self._sink = None
            with contextlib.suppress(pymssql.Error):
                cursor.close()
        return results

    def error(self, exc: BaseException, what: str) -> FerryError:
        text = _exception_text(exc)
        number = _exception_number(exc)
        if number is None or "Adaptive Server connection" in text or "DBPROCESS is dead" in text:
            return TargetUnreachable(
                f"{what} on {self.url}: the connection was lost ({_first_line(text)})",
                "Ferry asks the target where it stands and carries on when run again",
            )
        messages = [m for m in self._messages if m.severity > 10]
        if not messages:
            messages = [ServerMessage(16, text.split("DB-Lib error", 1)[0].strip())]
        specific = next((m.number for m in messages if m.number is not None), None)
        return SqlError(str(self.url), what, specific or number, messages)

    @property
    def messages(self) -> list[ServerMessage]:
        """The messages of the last batch (informational ones too)."""
        return list(self._messages)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection: nothing left to do
            self._raw.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _exception_args(exc: BaseException) -> tuple[Any, ...]:
    args = exc.args
    if len(args) == 1 and isinstance(args[0], tuple):
        return args[0]  # pymssql wraps connect() errors once more
    return args


def _exception_number(exc: BaseException) -> int | None:
    args = _exception_args(exc)
    if args and isinstance(args[0], int) and len(args) > 1:
        return args[0]
    return None


def _exception_text(exc: BaseException) -> str:
    args = _exception_args(exc)
    raw = args[1] if len(args) > 1 else (args[0] if args else "")
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("DB-Lib error message")]
    return (useful or lines or ["no answer"])[0]
