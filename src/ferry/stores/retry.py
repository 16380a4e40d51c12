"""Retries with backoff for transient store errors, and long reads that resume where they stopped.

Each store turns its SDK's exceptions into Ferry's: StoreUnavailable (and ObjectChanged) are transient,
everything else (credentials, permissions, a missing object) is permanent and raised at once, since the
same request would fail the same way. The SDKs' own retry loops are turned off so that there is one
policy, here, with the same budget on every store.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ferry.core.errors import FerryError
from ferry.stores.errors import ObjectChanged, StoreUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter. The default budget (about a minute) outlasts a server restart
    or a short network cut; FERRY_STORE_RETRY_SECONDS changes it."""

    deadline: float = 60.0
    first_delay: float = 0.1
    max_delay: float = 5.0

    @staticmethod
    def from_env() -> RetryPolicy:
        raw = os.environ.get("FERRY_STORE_RETRY_SECONDS", "")
        try:
            return RetryPolicy(deadline=max(0.0, float(raw))) if raw else RetryPolicy()
        except ValueError:
            return RetryPolicy()

    def delays(self) -> Iterator[float]:
        """Pauses between attempts until the deadline is spent."""
        spent, delay = 0.0, self.first_delay
        while spent < self.deadline:
            pause = min(delay * (0.5 + random.random()), self.max_delay, self.deadline - spent)
            spent += pause
            yield pause
            delay = min(delay * 2, self.max_delay)


def is_transient(exc: BaseException) -> bool:
    """Only the stores' own transient errors. FerryError.retryable is true by default, since a service
    step may well succeed when run again later; that is no reason to repeat, within one step, a request
    that failed for good, such as a read of an object that does not exist."""
    return isinstance(exc, StoreUnavailable | ObjectChanged)


def with_retries(
    op: Callable[[], T],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`op()`, tried again after each transient error until the policy's budget is spent; the last
    error then goes up with the number of attempts. Permanent errors go up at once."""
    attempts = 1
    delays = policy.delays()
    while True:
        try:
            return op()
        except FerryError as exc:
            if not is_transient(exc):
                raise
            pause = next(delays, None)
            if pause is None:
                if isinstance(exc, StoreUnavailable) and attempts > 1:
                    raise StoreUnavailable(exc.store, exc.what, exc.detail, attempts) from None
                raise
            if on_retry is not None:
                on_retry(exc)
            sleep(pause)
            attempts += 1


def resumable(
    open_at: Callable[[int, int], Iterator[bytes]],
    offset: int,
    length: int,
    policy: RetryPolicy,
    *,
    on_retry: Callable[[BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[bytes]:
    """Stream `length` bytes from `offset`: `open_at(start, count)` starts a stream (a ranged GET, a run
    of SMB reads). When it breaks with a transient error, a new stream starts at the first byte not yet
    delivered, so the caller sees each byte once and in order. The budget restarts after progress."""
    done = 0
    delays = policy.delays()
    while done < length:
        try:
            for piece in open_at(offset + done, length - done):
                if not piece:
                    continue
                done += len(piece)
                delays = policy.delays()  # progress: a later break gets a whole budget again
                yield piece
            return  # the stream ended: at the object's end (short) or with all that was asked
        except FerryError as exc:
            if not is_transient(exc):
                raise
            pause = next(delays, None)
            if pause is None:
                raise
            if on_retry is not None:
                on_retry(exc)
            sleep(pause)
