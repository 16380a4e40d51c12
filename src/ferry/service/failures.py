"""How a step's errors reach the workflow: Ferry's errors as ApplicationErrors (retryable or not, as
FerryError.retryable says), and the file system's refusals that no retry can fix as Ferry's errors."""

from __future__ import annotations

import errno

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError

from ferry.core.errors import FerryError, UsageError
from ferry.core.redact import safe


def as_application_error(exc: BaseException) -> BaseException:
    """Ferry's errors as ApplicationErrors the workflow reads: those no retry can fix are non-retryable
    (FerryError.retryable). They are expected, so benign to the SDK: it logs them at debug level instead
    of a warning with a traceback each (Ferry logs one line, _activity)."""
    if isinstance(exc, ApplicationError | CancelledError) or not isinstance(exc, FerryError):
        return exc
    return ApplicationError(
        safe(exc.message),
        safe(exc.hint),
        type=type(exc).__name__,
        non_retryable=not exc.retryable,
        category=ApplicationErrorCategory.BENIGN,
    )


class PathUnusable(UsageError):
    """A path the operating system refuses for good: a name too long, a loop of links, not a folder."""


# OSErrors no retry can fix: the path itself is wrong. A permission problem is fixed by someone, not by a
# retry a few seconds later; it fails the step at once with the same hint, and `retry` runs it again.
_PERMANENT = {
    errno.ENAMETOOLONG: "a name in the path is longer than 255 bytes, or the path longer than 4096: check it",
    errno.ELOOP: "the path goes through a loop of symbolic links: check them",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EACCES: "Ferry's user may not read it or enter a folder above it: fix the permissions, then retry",
    errno.EPERM: "Ferry's user may not read it or enter a folder above it: fix the permissions, then retry",
    errno.EINVAL: "the path is not one this file system takes: check it",
}


def os_failure(exc: OSError, where: str) -> FerryError | None:
    """A FerryError for an OSError no retry can fix, else None (a disk or a share briefly away)."""
    hint = _PERMANENT.get(exc.errno or 0)
    if hint is None:
        return None
    name = exc.filename if exc.filename is not None else where
    shown = str(name)
    if len(shown) > 200:
        shown = f"{shown[:100]}...{shown[-60:]} ({len(shown)} characters)"
    return PathUnusable(f"cannot read '{shown}': {exc.strerror or type(exc).__name__}", hint)
