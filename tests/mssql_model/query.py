"""SELECT: the T-SQL text is parsed by sqlglot (T-SQL dialect), its system views are renamed to the
SQLite tables of `views.py`, `CROSS APPLY sys.dm_os_volume_stats(a, b)` becomes a join, `@@` globals
become literals, and SQL Server's functions are SQLite functions. What the model cannot run fails with
SQL Server's own error for it (208 unknown object, 207 unknown column, 195 unknown function, 102).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, ClassVar

import sqlglot
from sqlglot import exp
from sqlglot.dialects.sqlite import SQLite

from tests.mssql_model import views
from tests.mssql_model.catalog import Database
from tests.mssql_model.errors import Message, SqlError, fail, message
from tests.mssql_model.instance import Instance, Session
from tests.mssql_model.pushdown import reduce_rows
from tests.mssql_model.tokens import BIGINT, FLOAT, INT, NVARCHAR, NVARCHAR_LONG, VARBINARY, ColType


class _StrictSQLite(SQLite):
    """SQLite with `backquoted` identifiers: a "double-quoted" name that matches no column would be read
    by SQLite as a string, hiding the 207 a driver author must see."""

    class Tokenizer(SQLite.Tokenizer):
        IDENTIFIERS: ClassVar[list[str | tuple[str, str]]] = ["`"]


Result = tuple[list[tuple[str, ColType]], list[tuple[Any, ...]]]

_TYPE_NAMES = {
    "INT": INT,
    "BIGINT": BIGINT,
    "SMALLINT": ColType("smallint"),
    "TINYINT": ColType("tinyint"),
    "BIT": ColType("bit"),
    "FLOAT": FLOAT,
    "DATETIME": ColType("datetime"),
    "DATETIME2": ColType("datetime2", 7),
    "UNIQUEIDENTIFIER": ColType("uniqueidentifier"),
    "VARBINARY": VARBINARY,
}


def version_banner(instance: Instance) -> str:
    """@@VERSION names the host: "... on Windows Server 2019 Datacenter 10.0 <X64> (Build 17763: )" or
    "... on Linux (Ubuntu 22.04.4 LTS) <X64>"
    (https://learn.microsoft.com/sql/t-sql/functions/version-transact-sql-configuration-functions)."""
    config = instance.config
    year = {10: "2008 R2", 11: "2012", 12: "2014", 13: "2016", 14: "2017", 15: "2019", 16: "2022"}.get(
        config.version_tuple[0], ""
    )
    host = (
        "Windows Server 2019 Datacenter 10.0 <X64> (Build 17763: ) (Hypervisor)"
        if config.platform == "windows"
        else "Linux (Ubuntu 22.04.4 LTS) <X64>"
    )
    return (
        f"Microsoft SQL Server {year} (RTM) - {config.version} (X64) \n"
        "\tCopyright (C) Microsoft Corporation\n"
        f"\t{config.edition} on {host} (SQL Server restore model of Ferry's tests, not a SQL Server)"
    )


def server_property(instance: Instance, name: str | None) -> object:
    config = instance.config
    major, minor, build = config.version_tuple
    values: dict[str, object] = {
        "productversion": config.version,
        "productmajorversion": str(major),
        "productminorversion": str(minor),
        "productbuild": str(build),
        "productlevel": "RTM",
        "edition": config.edition,
        "engineedition": config.engine_edition,
        "instancename": config.instance,
        "servername": config.server_name,
        "machinename": config.machine,
        "instancedefaultdatapath": config.data_path,
        "instancedefaultlogpath": config.log_path,
        "instancedefaultbackuppath": config.backup_path if major >= 15 else None,
        # 2017 and later: a backslash on Windows, a slash on Linux
        # (https://learn.microsoft.com/sql/t-sql/functions/serverproperty-transact-sql).
        "pathseparator": ("\\" if config.platform == "windows" else "/") if major >= 14 else None,
        "collation": "SQL_Latin1_General_CP1_CI_AS",
        "isclustered": 0,
        "ishadrenabled": 0,
        "issingleuser": 0,
        "isfulltextinstalled": 0,
        "isintegratedsecurityonly": 0,
    }
    return values.get((name or "").lower())


def _functions(instance: Instance, session: Session) -> dict[str, tuple[int, Callable[..., Any]]]:
    # Made anew for each SELECT, which sees one moment of the instance: SQLite calls DB_ID and DB_NAME once
    # per row, so their answers are kept for the rest of the query.
    ids: dict[str | None, int | None] = {}
    names: dict[int, str | None] = {}

    def db_id(name: str | None = None) -> int | None:
        if name not in ids:
            db = _database(instance, name or session.database)
            ids[name] = db.database_id if db else None
        return ids[name]

    def db_name(number: int | None = None) -> str | None:
        if number is None:
            return session.database
        if number not in names:
            names[number] = next(
                (d.name for d in views.all_databases(instance) if d.database_id == number), None
            )
        return names[number]

    def role_member(role: str, login: str | None = None) -> int | None:
        who = session.login if login is None else instance.state.logins.get(login.lower())
        if who is None or role.lower() not in (
            "sysadmin",
            "dbcreator",
            "serveradmin",
            "securityadmin",
            "processadmin",
            "setupadmin",
            "bulkadmin",
            "diskadmin",
            "public",
        ):
            return None
        roles = {r.lower() for r in who.roles}
        return 1 if role.lower() in roles or (role.lower() == "public") else 0

    def has_perms(_securable: object, _kind: object, permission: str) -> int:
        perm = (permission or "").upper()
        if "sysadmin" in {r.lower() for r in session.login.roles}:
            return 1
        if perm in ("CREATE ANY DATABASE", "CREATE DATABASE"):
            return 1 if session.has_role("dbcreator") else 0
        return 1 if session.has_permission(perm) else 0

    def dbprop(name: str, prop: str) -> object:
        db = _database(instance, name)
        if db is None:
            return None
        return {
            "status": db.state,
            "recovery": db.recovery_model,
            "useraccess": db.user_access,
            "updateability": "READ_ONLY" if db.is_read_only else "READ_WRITE",
            "isinstandby": 1 if db.is_in_standby else 0,
            "collation": "SQL_Latin1_General_CP1_CI_AS",
            "version": db.database_version or instance.config.database_version,
        }.get(prop.lower())

    return {
        "SERVERPROPERTY": (1, lambda p: server_property(instance, p)),
        "DB_ID": (-1, db_id),
        "DB_NAME": (-1, db_name),
        "SUSER_SNAME": (-1, lambda *_: session.login.name),
        "SUSER_NAME": (-1, lambda *_: session.login.name),
        "CURRENT_USER": (-1, lambda *_: session.login.name),  # sqlglot's spelling of SUSER_SNAME()
        "ORIGINAL_LOGIN": (0, lambda: session.login.name),
        "USER_NAME": (-1, lambda *_: "dbo"),
        "IS_SRVROLEMEMBER": (-1, role_member),
        "HAS_PERMS_BY_NAME": (3, has_perms),
        "DATABASEPROPERTYEX": (2, dbprop),
        "HOST_NAME": (0, lambda: session.host),
        "APP_NAME": (0, lambda: session.program),
        "OBJECT_ID": (-1, lambda *_: None),
    }


def _database(instance: Instance, name: str | None) -> Database | None:
    """By name, without listing every database: DB_ID() runs once per row of a query, and a list per call
    made queries quadratic in the number of databases."""
    if name is None:
        return None
    with instance.lock:
        found = instance.state.database(str(name))
    if found is not None:
        return found
    return next((d for d in views.system_databases(instance) if d.name.lower() == str(name).lower()), None)


def _globals(instance: Instance, session: Session) -> dict[str, object]:
    return {
        "VERSION": version_banner(instance),
        "SERVERNAME": instance.config.server_name,
        "SPID": session.spid,
        "TRANCOUNT": session.trancount,
        "SERVICENAME": instance.config.instance or "MSSQLSERVER",
        "LANGUAGE": "us_english",
        "MICROSOFTVERSION": (instance.config.version_tuple[0] << 24),
        "ROWCOUNT": 0,
        "ERROR": 0,
        "LOCK_TIMEOUT": -1,
    }


def _table_name(table: exp.Table) -> str | None:
    name, schema, catalog = table.name.lower(), table.db.lower(), table.catalog.lower()
    if schema == "sys":
        return f"sys_{name}" if f"sys_{name}" in views.SCHEMA else None
    if catalog == "msdb" and schema in ("dbo", ""):
        return f"msdb_{name}" if f"msdb_{name}" in views.SCHEMA else None
    if name == "sysprocesses" and schema in ("", "dbo") and catalog in ("", "master"):
        return "sys_sysprocesses"
    return None


def _rewrite(tree: exp.Expression, instance: Instance, session: Session) -> dict[str, str]:
    """Rename views, turn APPLY of sys.dm_os_volume_stats into joins, inline @@ globals. Returns the
    query's table aliases (alias -> SQLite table) for typing the result columns."""
    aliases: dict[str, str] = {}
    values = _globals(instance, session)
    for param in list(tree.find_all(exp.Parameter)):
        if isinstance(param.parent, exp.Parameter):
            continue
        inner = param.this
        if isinstance(inner, exp.Parameter):
            key = inner.name.upper()
            if key not in values:
                raise fail(137, "@@" + key)
            value = values[key]
            param.replace(
                exp.Literal.number(value) if isinstance(value, int) else exp.Literal.string(str(value))
            )
        else:
            raise fail(137, "@" + param.name)
    for national in list(tree.find_all(exp.National)):
        national.replace(exp.Literal.string(national.name))
    for join in list(tree.find_all(exp.Join)):
        lateral = join.this
        if isinstance(lateral, exp.Lateral):
            call = lateral.this.expression if isinstance(lateral.this, exp.Dot) else lateral.this
            name = call.name.lower() if isinstance(call, exp.Func) else ""
            if name != "dm_os_volume_stats" or len(call.expressions) != 2:
                raise fail(208, lateral.this.sql("tsql"))
            alias = lateral.alias or "dm_os_volume_stats"
            table = exp.Table(
                this=exp.to_identifier("sys_dm_os_volume_stats"),
                alias=exp.TableAlias(this=exp.to_identifier(alias)),
            )
            on = exp.and_(
                exp.EQ(this=exp.column("database_id", table=alias), expression=call.expressions[0].copy()),
                exp.EQ(this=exp.column("file_id", table=alias), expression=call.expressions[1].copy()),
            )
            kind = "LEFT" if lateral.args.get("cross_apply") is False else None
            join.replace(exp.Join(this=table, on=on, side=kind))
            aliases[alias.lower()] = "sys_dm_os_volume_stats"
    for table in list(tree.find_all(exp.Table)):
        call = table.this
        if isinstance(call, exp.Anonymous) and call.name.lower() == "dm_os_volume_stats":
            if len(call.expressions) != 2:
                raise fail(174, "dm_os_volume_stats", 2)
            alias = table.alias or "dm_os_volume_stats"
            where = exp.and_(
                exp.EQ(this=exp.column("database_id"), expression=call.expressions[0].copy()),
                exp.EQ(this=exp.column("file_id"), expression=call.expressions[1].copy()),
            )
            inner = exp.select("*").from_("sys_dm_os_volume_stats").where(where)
            table.replace(exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(alias))))
            aliases[alias.lower()] = "sys_dm_os_volume_stats"
            continue
        if table.name.lower() == "sys_dm_os_volume_stats":
            continue
        if not table.name:
            continue
        mapped = _table_name(table)
        if mapped == "sys_dm_os_host_info" and instance.config.version_tuple[0] < 14:
            mapped = None  # new in SQL Server 2017
        if mapped is None:
            raise fail(208, ".".join(p for p in (table.catalog, table.db, table.name) if p))
        alias = table.alias or table.name
        aliases[alias.lower()] = mapped
        table.set("catalog", None)
        table.set("db", None)
        table.set("this", exp.to_identifier(mapped))
        table.set("hints", None)
        if not table.alias:
            table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
    return aliases


def _column_type(projection: exp.Expression, aliases: dict[str, str]) -> ColType | None:
    node = projection.this if isinstance(projection, exp.Alias) else projection
    if isinstance(node, exp.Cast | exp.Convert | exp.TryCast):
        target = node.to if isinstance(node, exp.Cast) else node.this
        if isinstance(target, exp.DataType):
            return _TYPE_NAMES.get(target.this.name)
        return None
    if isinstance(node, exp.Column):
        tables = (
            [aliases[node.table.lower()]]
            if node.table and node.table.lower() in aliases
            else list(aliases.values())
        )
        for table in tables:
            for name, col in views.SCHEMA.get(table, []):
                if name.lower() == node.name.lower():
                    return col
    if isinstance(node, exp.Count):
        return INT
    return None


def _infer(values: list[Any]) -> ColType:
    sample = [v for v in values if v is not None]
    if not sample:
        return NVARCHAR
    if all(isinstance(v, bool | int) for v in sample):
        return INT if all(-(2**31) <= int(v) < 2**31 for v in sample) else BIGINT
    if all(isinstance(v, int | float) for v in sample):
        return FLOAT
    if all(isinstance(v, bytes) for v in sample):
        return VARBINARY
    return NVARCHAR_LONG if any(len(str(v)) > 256 for v in sample) else NVARCHAR


def _sqlite_type(col: ColType) -> str:
    # Text columns compare case-insensitively, as under SQL Server's default collation.
    if col.kind in ("int", "bigint", "smallint", "tinyint", "bit", "decimal"):
        return "INTEGER"
    return "TEXT COLLATE NOCASE" if col.kind in ("nvarchar", "uniqueidentifier") else "TEXT"


def run_select(instance: Instance, session: Session, text: str) -> Result:
    try:
        tree = sqlglot.parse_one(text, read="tsql")
    except sqlglot.errors.ParseError as exc:
        near = (exc.errors[0].get("highlight") if exc.errors else None) or text.split()[-1]
        raise fail(102, near) from None
    if not isinstance(tree, exp.Select | exp.Union | exp.Except | exp.Intersect):
        raise fail(102, text.split()[0])
    aliases = _rewrite(tree, instance, session)
    sql = tree.sql(_StrictSQLite, identify=True)
    db = sqlite3.connect(":memory:")
    try:
        functions = _functions(instance, session)
        for fname, (nargs, func) in functions.items():
            db.create_function(fname, nargs, func)
        data = views.rows(instance, session, set(aliases.values()))
        reduce_rows(tree, aliases, data, {name.upper(): func for name, (_, func) in functions.items()})
        for table in set(aliases.values()):
            columns = views.SCHEMA[table]
            decl = ", ".join(f'"{n}" {_sqlite_type(t)}' for n, t in columns)
            db.execute(f'CREATE TABLE "{table}" ({decl})')
            db.executemany(
                f'INSERT INTO "{table}" VALUES ({", ".join("?" for _ in columns)})',
                [tuple(r.get(n) for n, _ in columns) for r in data[table]],
            )
        try:
            cursor = db.execute(sql)
        except sqlite3.OperationalError as exc:
            raise _translate(str(exc)) from None
        rows = cursor.fetchall()
        names = [d[0] for d in cursor.description or []]
    finally:
        db.close()
    return _typed(tree, aliases, names, rows), rows


def _typed(
    tree: exp.Expression, aliases: dict[str, str], names: list[str], rows: list[tuple[Any, ...]]
) -> list[tuple[str, ColType]]:
    select = tree if isinstance(tree, exp.Select) else tree.find(exp.Select)
    projections = list(select.expressions) if select is not None else []
    star = any(
        isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
        for p in projections
    )
    columns: list[tuple[str, ColType]] = []
    for index, name in enumerate(names):
        values = [r[index] for r in rows]
        if star or index >= len(projections):
            declared = next((c for t in aliases.values() for n, c in views.SCHEMA[t] if n == name), None)
            columns.append((name, declared or _infer(values)))
            continue
        projection = projections[index]
        label = projection.alias_or_name if isinstance(projection, exp.Alias | exp.Column) else ""
        columns.append((label, _column_type(projection, aliases) or _infer(values)))
    return columns


def _translate(error: str) -> SqlError:
    lowered = error.lower()
    if lowered.startswith("no such column:"):
        return fail(207, error.split(":", 1)[1].strip().split(".")[-1])
    if lowered.startswith("ambiguous column name:"):
        return fail(209, error.split(":", 1)[1].strip().split(".")[-1])
    if lowered.startswith("no such function:"):
        return fail(195, error.split(":", 1)[1].strip())
    if "wrong number of arguments" in lowered:
        return fail(195, error.split("function")[-1].strip(" ()"))
    text = message(102, error).text + " (The SQL Server model of Ferry's tests could not run this SELECT.)"
    return SqlError(Message(102, text, 15))
