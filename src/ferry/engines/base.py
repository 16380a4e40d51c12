"""What the pipeline needs from an engine. Engines see stores only through RangeReader."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ferry.core.catalog import DatabaseCatalog, RecoveryTarget
from ferry.core.findings import Finding
from ferry.core.plan import DatabasePlan
from ferry.stores.base import RangeReader


class Engine(Protocol):
    @property
    def name(self) -> str: ...

    def sniff(self, head: bytes) -> bool:
        """Whether a file whose first bytes are `head` belongs to this engine."""
        ...

    def read(self, reader: RangeReader) -> Sequence[object]:
        """The backup sets in one file. Raises BackupFormatError for a file it cannot read."""
        ...

    def catalog(self, sets: Sequence[object]) -> tuple[list[DatabaseCatalog], list[Finding]]:
        """Per database, what is there and how far it can be restored."""
        ...

    def plan(
        self, sets: Sequence[object], target: RecoveryTarget | None
    ) -> tuple[list[DatabasePlan], list[Finding]]:
        """Per database, the chosen restore chain and the findings about it."""
        ...
