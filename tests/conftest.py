"""Shared fixtures. The SQL Server corpus is real backup files kept outside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def corpus_root() -> Path | None:
    """FERRY_SQLSERVER_CORPUS, else ../shared/sqlserver-backups beside the checkout."""
    env = os.environ.get("FERRY_SQLSERVER_CORPUS")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "sqlserver-backups")
    return next((p for p in candidates if p.is_dir()), None)


@pytest.fixture(scope="session")
def corpus() -> Path:
    root = corpus_root()
    if root is None:
        pytest.skip(
            "SQL Server backup corpus not found: set FERRY_SQLSERVER_CORPUS or place it at "
            "../shared/sqlserver-backups"
        )
    return root
