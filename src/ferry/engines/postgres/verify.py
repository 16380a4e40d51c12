"""Proof that nothing was lost: per-table row counts and content checksums, compared source to target.

A table's checksum is the md5 of its rows' md5s in sorted order, so it needs no primary key and does not
depend on the physical order of rows, which differs between a source and a restored copy after VACUUM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class TableFingerprint:
    database: str
    schema: str
    table: str
    rows: int
    checksum: str

    @property
    def name(self) -> str:
        return f"{self.database}.{self.schema}.{self.table}"


def fingerprints(connect: Any, databases: list[str]) -> dict[str, TableFingerprint]:
    """Fingerprints of every user table in `databases`; `connect(dbname)` returns a psycopg connection."""
    from psycopg import sql

    out: dict[str, TableFingerprint] = {}
    for db in databases:
        with connect(db) as conn:
            for schema, table in conn.execute(_TABLES).fetchall():
                query = sql.SQL(
                    "SELECT count(*), coalesce(md5(string_agg(h, '' ORDER BY h)), '') "
                    "FROM (SELECT md5(t::text) AS h FROM {}.{} AS t) AS rows"
                ).format(sql.Identifier(schema), sql.Identifier(table))
                rows, checksum = conn.execute(query).fetchone()
                fp = TableFingerprint(db, schema, table, int(rows), str(checksum))
                out[fp.name] = fp
    return out


def user_databases(connect: Any) -> list[str]:
    with connect("postgres") as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def differences(source: dict[str, TableFingerprint], target: dict[str, TableFingerprint]) -> list[str]:
    """Human sentences, one per table that differs; empty when the copies are identical."""
    out = []
    for name in sorted(set(source) | set(target)):
        s, t = source.get(name), target.get(name)
        if s is None:
            out.append(f"table {name} exists only on the target")
        elif t is None:
            out.append(f"table {name} is missing on the target")
        elif s.rows != t.rows:
            out.append(f"table {name} has {s.rows} rows on the source and {t.rows} on the target")
        elif s.checksum != t.checksum:
            out.append(f"table {name} has the same row count but different content")
    return out
