"""Fewer rows into SQLite: a SELECT's `alias.column = literal` conditions (and `= DB_ID('x')`), AND-ed at
the top of its WHERE, and its INNER JOINs on `a.x = b.y`, applied to the view rows before they are loaded.

Each SELECT loads the views it reads into a fresh in-memory SQLite database. With hundreds of databases
and their restore history, loading every row for a query that asks about one database made the model, not
the client, the slowest part of a benchmark. The query still runs whole on what is loaded, so this only
drops rows its WHERE or its inner joins would drop anyway; anything it does not understand keeps every
row. Only plain single-SELECT queries in which each view appears once are reduced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlglot import exp

Rows = dict[str, list[dict[str, Any]]]
Functions = dict[str, Callable[..., Any]]


def reduce_rows(tree: exp.Expression, aliases: dict[str, str], rows: Rows, functions: Functions) -> None:
    """Filter `rows` (view -> rows) in place for the query `tree` (already rewritten: `aliases` maps each
    alias to its view)."""
    if not isinstance(tree, exp.Select) or len(list(tree.find_all(exp.Select))) != 1:
        return
    tables = [t for t in tree.find_all(exp.Table)]
    named = [t.name.lower() for t in tables]
    if len(set(named)) != len(named):
        return  # a view read twice (a self-join): each alias needs its own rows
    where = tree.args.get("where")
    if where is not None:
        for column, value in _equalities(where.this, functions):
            view = aliases.get(column.table.lower()) if column.table else None
            if view in rows:
                rows[view] = [r for r in rows[view] if _same(_get(r, column.name), value)]
    for join in tree.args.get("joins") or []:
        if join.side or join.kind not in ("", "INNER") or not isinstance(join.args.get("on"), exp.EQ):
            continue
        left, right = join.args["on"].this, join.args["on"].expression
        if not (isinstance(left, exp.Column) and isinstance(right, exp.Column)):
            continue
        a, b = aliases.get(left.table.lower()), aliases.get(right.table.lower())
        if a in rows and b in rows and a != b:
            _semi_join(rows, a, left.name, b, right.name)
            _semi_join(rows, b, right.name, a, left.name)


def _equalities(node: exp.Expression, functions: Functions) -> list[tuple[exp.Column, Any]]:
    if isinstance(node, exp.And):
        return _equalities(node.this, functions) + _equalities(node.expression, functions)
    if isinstance(node, exp.Paren):
        return _equalities(node.this, functions)
    if not isinstance(node, exp.EQ):
        return []
    for column, other in ((node.this, node.expression), (node.expression, node.this)):
        if isinstance(column, exp.Column) and column.table:
            known, value = _constant(other, functions)
            if known:
                return [(column, value)]
    return []


def _constant(node: exp.Expression, functions: Functions) -> tuple[bool, Any]:
    if isinstance(node, exp.Literal):
        if node.is_string:
            return True, node.this
        return (True, int(node.this)) if node.this.isdigit() else (False, None)
    if isinstance(node, exp.Anonymous | exp.Func) and node.name.upper() == "DB_ID":
        args = node.expressions or ([node.this] if isinstance(node.this, exp.Expression) else [])
        if len(args) == 1 and isinstance(args[0], exp.Literal) and args[0].is_string and "DB_ID" in functions:
            return True, functions["DB_ID"](args[0].this)
    return False, None


def _get(row: dict[str, Any], name: str) -> Any:
    if name in row:
        return row[name]
    lower = name.lower()
    return next((v for k, v in row.items() if k.lower() == lower), None)


def _same(value: Any, wanted: Any) -> bool:
    """SQL equality as the loaded table compares: text without regard to case (NOCASE); NULL equals
    nothing; anything this cannot compare is kept."""
    if value is None or wanted is None:
        return False
    if isinstance(wanted, str) and isinstance(value, str):
        return value.lower() == wanted.lower()
    if isinstance(wanted, int) and isinstance(value, bool | int):
        return int(value) == wanted
    return True


def _semi_join(rows: Rows, view: str, column: str, other: str, other_column: str) -> None:
    """Keep the rows of `view` that an inner join on view.column = other.other_column can match."""
    keys = {_key(_get(r, other_column)) for r in rows[other]}
    mine = [_key(_get(r, column)) for r in rows[view]]
    kinds = {type(k) for k in (*keys, *mine) if k is not None}
    if len(kinds) > 1:
        return  # SQLite may compare across types (affinity): keep every row
    rows[view] = [r for r, k in zip(rows[view], mine, strict=True) if k in keys]


def _key(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value
