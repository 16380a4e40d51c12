"""Findings: what a check found, as data. Each has a stable code that scripts may match on."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ferry.core.errors import FerryError


class Severity(StrEnum):
    """`error` blocks a restore; `warning` deserves a look; `info` is context."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    message: str
    hint: str
    files: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "hint": self.hint,
            "files": list(self.files),
        }


def has_errors(findings: tuple[Finding, ...] | list[Finding]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)


class MigrationBlocked(FerryError):
    """A migration cannot start: its findings say why, and no retry changes that. The message leads with
    the first error's code, so that a record that keeps only the message (the service's) still says
    which finding it was."""

    retryable = False

    def __init__(self, what: str, findings: list[Finding] | tuple[Finding, ...]) -> None:
        errors = [f for f in findings if f.severity is Severity.ERROR]
        first = errors[0] if errors else None
        super().__init__(
            f"migration of {what} is blocked: "
            + (f"[{first.code}] {first.message}" if first else "no restorable chain"),
            first.hint if first else "run `ferry plan` on the source for details",
        )
        self.findings = list(findings)
