"""The errors every store raises, whatever SDK or protocol lies beneath: each names the store (redacted)
and the object, and says what to do. `retryable` tells callers whether trying again later may help.

ObjectNotFound and StoreError themselves live in ferry.core.errors, which engines already catch.
"""

from __future__ import annotations

from ferry.core.errors import ObjectNotFound, StoreError, UsageError
from ferry.stores.location import redact_text

__all__ = [
    "AccessDenied",
    "InvalidKey",
    "MissingExtra",
    "ObjectChanged",
    "ObjectConflict",
    "ObjectNotFound",
    "StoreError",
    "StoreNotFound",
    "StoreUnavailable",
]


class StoreUnavailable(StoreError):
    """The store did not answer, or answered with a transient error, even after retries."""

    retryable = True

    def __init__(self, store: str, what: str, detail: str, attempts: int = 1) -> None:
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        super().__init__(
            f"cannot {what} in store '{store}'{tries}: {redact_text(detail)}",
            "check that the server is up and reachable from this machine; Ferry retries transient errors "
            "with backoff, so this one lasted",
        )
        self.store = store
        self.what = what
        self.detail = detail
        self.attempts = attempts


class AccessDenied(StoreError):
    """Credentials rejected, or not allowed to do this. Never retried: the same request fails again."""

    retryable = False

    def __init__(self, store: str, what: str, detail: str, hint: str) -> None:
        super().__init__(f"store '{store}' refused to {what}: {redact_text(detail)}", hint)
        self.store = store
        self.what = what


class StoreNotFound(StoreError):
    """The container, share or bucket itself does not exist (a missing prefix is not an error)."""

    retryable = False

    def __init__(self, store: str, detail: str, hint: str) -> None:
        super().__init__(f"store '{store}' does not exist: {redact_text(detail)}", hint)
        self.store = store


class InvalidKey(ObjectNotFound):
    """A key that is no path inside the store: `..`, a leading `/`, a NUL. It names no object, so code that
    handles ObjectNotFound handles it too; its message says why."""

    retryable = False

    def __init__(self, store: str, key: str, reason: str) -> None:
        StoreError.__init__(
            self,
            f"key {key!r} is not a path inside store '{store}': {reason}",
            "keys are '/'-separated paths relative to the store's root, without '..' or a leading '/'",
        )
        self.store = store
        self.key = key


class ObjectConflict(StoreError):
    """`put_new` found a different object under the key: stores never overwrite."""

    retryable = False

    def __init__(self, store: str, key: str) -> None:
        super().__init__(
            f"cannot write '{key}' in store '{store}': the store already holds a different '{key}'",
            "two writers may be using the same store (each source needs its own), or the stored object is "
            "damaged; compare both, then move the wrong one aside. Ferry never overwrites an object",
        )
        self.store = store
        self.key = key


class ObjectChanged(StoreError):
    """An object changed (new etag) while it was being read: it is still being written."""

    retryable = True

    def __init__(self, store: str, key: str) -> None:
        super().__init__(
            f"'{key}' in store '{store}' changed while Ferry read it",
            "it is still being written; Ferry reads it again on the next scan",
        )
        self.store = store
        self.key = key


class MissingExtra(UsageError):
    """A store whose SDK is an optional extra that is not installed."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(
            f"reading {what} needs the Python package '{module}', which is not installed",
            f"install it with: pip install 'ferry-migrate[{extra}]'",
        )
        self.extra = extra
