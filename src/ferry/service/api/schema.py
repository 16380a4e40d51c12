"""The OpenAPI document at /openapi.json: FastAPI's, made to say what the API does.

- No 422 answers: validation errors are 400s in the one error shape.
- A migration's `target` is one of the targets the service knows now (agents register themselves, so
  the document is made again when they change), and its example names one of them: a body the document
  allows is one the API takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


class Document:
    def __init__(self, app: FastAPI, targets: Mapping[str, Any] | None) -> None:
        self.app = app
        self.targets = targets
        self._made: tuple[tuple[str, ...], dict[str, Any]] | None = None

    def __call__(self) -> dict[str, Any]:
        known = tuple(sorted(self.targets)) if self.targets is not None else ()
        if self._made is None or self._made[0] != known:
            self._made = (known, self._make(known))
        return self._made[1]

    def _make(self, known: tuple[str, ...]) -> dict[str, Any]:
        app = self.app
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path in doc.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = doc.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        migration = schemas.get("MigrationIn")
        if migration is not None and known:
            migration["properties"]["target"]["enum"] = list(known)
            migration["examples"] = [{"source": "/backups/pg/sales", "target": known[0]}]
        return doc
