"""Reading the real corpus once per test session."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from ferry.engines.sqlserver.headers import BackupSet
from ferry.engines.sqlserver.reader import read_backup_sets
from ferry.stores.local import LocalFileReader
from tests.conftest import corpus_root


def backup_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "README.md")


def read_file(root: Path, path: Path) -> list[BackupSet]:
    with LocalFileReader(path.relative_to(root).as_posix(), path) as reader:
        return read_backup_sets(reader)


@cache
def all_sets() -> tuple[BackupSet, ...]:
    root = corpus_root()
    assert root is not None
    return tuple(s for p in backup_files(root) for s in read_file(root, p))


def corpus_params() -> list[str]:
    """Relative paths of the corpus files, for parametrize; empty without a corpus (tests then skip)."""
    root = corpus_root()
    return [p.relative_to(root).as_posix() for p in backup_files(root)] if root else []
