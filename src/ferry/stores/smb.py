"""SMB shares (Windows file servers, Samba, NAS), read in user space with smbprotocol: no kernel mount.

`smb://[DOMAIN;]USER@HOST[:PORT]/SHARE/PATH`. The password comes from FERRY_SMB_PASSWORD or the
credentials file (`[smb://USER@HOST]`, then `[smb://HOST]`, key `password`); a password written in the
URL works too but is masked wherever Ferry shows the location. The user, when the URL names none,
comes from FERRY_SMB_USER or the file; the domain from the URL, FERRY_SMB_DOMAIN or the file.

A share has no etags: a file's size and last write time stand in for one (`version_tag`), in listings
and in what a CREATE answers. A read that loses its connection reconnects, opens the file again and goes
on from the byte it stopped at, provided the file has the same tag as when it was first opened; reads
never go past the size seen at open. So a reader whose tag equals the listing's read the file that was
listed, and the scan needs no second look at it (a file still growing shows another tag at open, or is
short at the size it had, and the next scan sees its new tag).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, BinaryIO, TypeVar

from ferry.core.errors import ObjectNotFound, StoreError
from ferry.core.findings import Finding, Severity
from ferry.stores import credentials
from ferry.stores.base import (
    ObjectInfo,
    PutResult,
    StoreCapabilities,
    check_key,
    check_prefix,
    same_content,
    source_chunks,
    source_size,
)
from ferry.stores.errors import (
    AccessDenied,
    InvalidKey,
    MissingExtra,
    ObjectChanged,
    ObjectConflict,
    StoreNotFound,
    StoreUnavailable,
)
from ferry.stores.location import Location
from ferry.stores.remote import Fetched, RemoteReader
from ferry.stores.retry import RetryPolicy, with_retries

PARALLEL_READS = 4
PIECE = 1 << 20
T = TypeVar("T")


class SmbStore:
    def __init__(self, loc: Location, *, policy: RetryPolicy | None = None) -> None:
        try:
            import smbclient
        except ImportError:
            raise MissingExtra("SMB shares", "smb", "smbprotocol") from None
        self._smb = smbclient
        self.location = loc
        self._url = loc.display
        self._policy = policy or RetryPolicy.from_env()
        file = credentials.section(
            *([f"smb://{loc.user}@{loc.host}"] if loc.user else []), f"smb://{loc.host}"
        )
        user = loc.user or os.environ.get("FERRY_SMB_USER") or file.get("user", "")
        domain = loc.domain or os.environ.get("FERRY_SMB_DOMAIN") or file.get("domain", "")
        self._password = loc.password or os.environ.get("FERRY_SMB_PASSWORD") or file.get("password", "")
        self._user = f"{domain}\\{user}" if domain and user else user
        if loc.password:
            self._password_source = "the URL"
        elif os.environ.get("FERRY_SMB_PASSWORD"):
            self._password_source = "FERRY_SMB_PASSWORD"
        elif file.get("password"):
            self._password_source = str(credentials.credentials_path())
        else:
            self._password_source = "nowhere (no password found)"
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._root = loc.path
        self._share = f"\\\\{loc.host}\\{loc.share}"
        self._auth_hint = (
            f"check the user ('{self._user or 'none given'}') and the password Ferry took from "
            f"{self._password_source}; set FERRY_SMB_PASSWORD or the credentials file (docs/stores.md)"
        )

    @property
    def url(self) -> str:
        return self._url

    @property
    def capabilities(self) -> StoreCapabilities:
        return StoreCapabilities(
            ranged_reads=True,
            etags=True,
            writable=True,
            resumable_reads=True,
            pinned_reads=True,
            parallel_reads=PARALLEL_READS,
            poll_seconds=10.0,
        )

    # -- plumbing -----------------------------------------------------------------------------------

    def _kw(self) -> dict[str, Any]:
        return {
            "port": self.location.port or 445,
            "connection_cache": self._cache,
            "username": self._user or None,
            "password": self._password or None,
            "connection_timeout": 10,
        }

    def _unc(self, rel: str) -> str:
        full = "/".join(x for x in (self._root, rel) if x)
        return self._share + ("\\" + full.replace("/", "\\") if full else "")

    def _name(self, key: str) -> str:
        key = check_key(key, self._url)
        if "\\" in key:  # a separator on SMB: it would name another path than the key says
            raise InvalidKey(self._url, key, "it contains '\\'")
        return key

    def _call(self, what: str, op: Callable[[], T], key: str | None = None) -> T:
        """`op` with retries; SMB errors become Ferry's, and a broken connection is dropped so the next
        attempt connects again."""

        def attempt() -> T:
            try:
                return op()
            except Exception as exc:
                err = self._translate(exc, what, key)
                if isinstance(err, StoreUnavailable):
                    self._reset()
                raise err from None

        return with_retries(attempt, self._policy)

    def _reset(self) -> None:
        with self._lock:
            try:
                self._smb.reset_connection_cache(fail_on_error=False, connection_cache=self._cache)
            except Exception:
                self._cache.clear()  # a dead connection may refuse even to be closed

    def _translate(self, exc: BaseException, what: str, key: str | None) -> StoreError:
        """Ferry's error for an SMB failure; anything that is no store failure goes up unchanged."""
        from smbprotocol import exceptions as e

        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, e.SMBAuthenticationError | e.LogonFailure) or "STATUS_LOGON_FAILURE" in str(exc):
            return AccessDenied(
                self._url, what, "the server rejected the user name or password", self._auth_hint
            )
        if isinstance(exc, e.BadNetworkName) or getattr(exc, "ntstatus", None) == 0xC00000CC:
            return StoreNotFound(self._url, f"no share '{self.location.share}' on {self.location.host}",
                                 "check the share's name (net share on the server lists them)")  # fmt: skip
        if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
            return ObjectNotFound(self._url, key or "")
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
            return AccessDenied(
                self._url,
                what,
                detail,
                "give the share user read access (and write access to archive) on the path",
            )
        if isinstance(exc, e.SMBResponseException) and not isinstance(exc, e.SMBOSError):
            return StoreError(
                f"cannot {what} in store '{self._url}': {detail}", "check the share and the path"
            )
        if isinstance(exc, OSError | EOFError | e.SMBException) or (
            isinstance(exc, ValueError) and "connect" in str(exc).lower()  # smbprotocol's connect failure
        ):
            # Connection refused or reset, a closed connection, a timeout: worth another try.
            return StoreUnavailable(self._url, what, detail)
        raise exc  # not a store problem: a bug, reported as one

    # -- reads --------------------------------------------------------------------------------------

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = check_prefix(prefix, self._url)
        if prefix:
            try:
                yield self.stat(prefix)
                return
            except ObjectNotFound:
                pass
        yield from self._walk(prefix)

    def _walk(self, folder: str) -> Iterator[ObjectInfo]:
        try:
            entries = self._call(f"list '{folder or '/'}'", lambda: self._listdir(folder), folder)
        except ObjectNotFound:
            return  # a missing prefix yields nothing
        for name, is_dir, info in entries:
            rel = f"{folder}/{name}" if folder else name
            if is_dir:
                yield from self._walk(rel)
            elif info is not None:
                yield ObjectInfo(rel, info[0], version_tag(info[0], info[1]), _stamp(info[1]))

    def _listdir(self, folder: str) -> list[tuple[str, bool, tuple[int, Any] | None]]:
        out = []
        for entry in self._smb.scandir(self._unc(folder), **self._kw()):
            smb = entry.smb_info
            is_dir = bool(smb.file_attributes & 0x10)
            out.append(
                (entry.name, is_dir, None if is_dir else (int(smb.end_of_file), _stamp(smb.last_write_time)))
            )
        return sorted(out)

    def stat(self, key: str) -> ObjectInfo:
        """From the parent folder's entry for the file, so that size, time and tag are exactly what a
        listing says (a file's own query reports the time at another precision)."""
        name = self._name(key)
        folder, _, base = name.rpartition("/")

        def op() -> ObjectInfo:
            for entry in self._smb.scandir(self._unc(folder), search_pattern=base, **self._kw()):
                smb = entry.smb_info
                if entry.name == base and not smb.file_attributes & 0x10:
                    size = int(smb.end_of_file)
                    return ObjectInfo(
                        name, size, version_tag(size, smb.last_write_time), _stamp(smb.last_write_time)
                    )
            raise FileNotFoundError(errno.ENOENT, "no such file")

        return self._call(f"read '{name}'", op, name)

    def open(self, key: str) -> RemoteReader:
        return _SmbFile(self, self._name(key)).reader()

    # -- writes -------------------------------------------------------------------------------------

    def put_new(self, key: str, source: bytes | BinaryIO) -> PutResult:
        """A temp file in the same folder, then a rename that refuses to replace (SMB2 rename with
        ReplaceIfExists off): atomic and never overwriting. A name that exists is compared."""
        name = self._name(key)
        folder, _, base = name.rpartition("/")
        tmp = f"{folder}/" if folder else ""
        tmp += f".{base}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"

        def write() -> bool:
            if folder:
                self._smb.makedirs(self._unc(folder), exist_ok=True, **self._kw())
            with self._smb.open_file(self._unc(tmp), mode="wb", **self._kw()) as f:
                for piece in source_chunks(source):
                    f.write(piece)
                f.flush()
            try:
                self._smb.rename(self._unc(tmp), self._unc(name), **self._kw())
                return False
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                return True
            finally:
                with contextlib.suppress(OSError):  # renamed away: the usual case
                    self._smb.remove(self._unc(tmp), **self._kw())

        present = self._call(f"write '{name}'", write, name)
        if present:
            with self.open(name) as reader:
                if not same_content(reader, source):
                    raise ObjectConflict(self._url, name)
        return PutResult(name, source_size(source), present)

    # -- checks -------------------------------------------------------------------------------------

    def check_access(self, *, write: bool = False) -> list[Finding]:
        try:
            self._call("connect", lambda: self._smb.stat(self._unc(""), **self._kw()), "")
        except AccessDenied as exc:
            return [Finding("store-access-denied", Severity.ERROR, exc.message, exc.hint)]
        except StoreNotFound as exc:
            return [Finding("store-missing", Severity.ERROR, exc.message, exc.hint)]
        except ObjectNotFound:
            what = f"folder '{self._root}'" if self._root else f"share '{self.location.share}'"
            return [
                Finding(
                    "store-missing",
                    Severity.ERROR,
                    f"store '{self._url}' does not exist: no {what} on {self.location.host}",
                    "check the share's name (net share on the server lists them) and the path after it",
                )
            ]
        except StoreError as exc:
            return [Finding("store-unreachable", Severity.ERROR, exc.message, exc.hint)]
        return []

    def after_fork(self) -> None:
        """A forked child's own connections (see ForkableStore): smbprotocol's inherited ones share the
        parent's socket and their receiving thread did not survive the fork, so they are dropped unused."""
        self._cache = {}
        self._lock = threading.Lock()
        # The session is set up here, before the child's reading threads start: smbclient sets up a
        # connection's first session unsafely when several threads ask at once (one waited forever).
        with contextlib.suppress(Exception):  # a failure here is met again, and reported, by the reads
            self._smb.register_session(self.location.host, **self._kw())

    def close(self) -> None:
        self._reset()


class _SmbFile:
    """One open file, reopened after a lost connection as long as it has not changed."""

    def __init__(self, store: SmbStore, name: str) -> None:
        self.store = store
        self.name = name
        self.raw: Any = None
        self.version: str | None = None

    def reader(self) -> RemoteReader:
        return RemoteReader(self.name, self.fetch, self.store._policy, on_close=self.close)

    def _ensure(self) -> Any:
        if self.raw is None:
            raw = self.store._smb.open_file(
                self.store._unc(self.name), mode="rb", buffering=0, share_access="rwd", **self.store._kw()
            )
            fd = raw.fd
            version = version_tag(int(fd.end_of_file), fd.last_write_time)
            if self.version is not None and version != self.version:
                raw.close()
                raise ObjectChanged(self.store.url, self.name)
            self.raw, self.version = raw, version
        return self.raw

    def fetch(self, offset: int, length: int, _etag: str | None) -> Fetched:
        try:
            raw = self._ensure()
        except Exception as exc:
            self.raw = None
            err = self.store._translate(exc, f"read '{self.name}'", self.name)
            if isinstance(err, StoreUnavailable):
                self.store._reset()
            raise err from None
        size = int(raw.fd.end_of_file)
        return Fetched(size, self.version, self._pieces(raw, offset, min(length, max(0, size - offset))))

    def _pieces(self, raw: Any, offset: int, length: int) -> Iterator[bytes]:
        step = min(PIECE, int(raw.fd.connection.max_read_size))
        end = offset + length
        while offset < end:
            try:
                data = raw.fd.read(offset, min(step, end - offset))
            except Exception as exc:
                self.raw = None
                err = self.store._translate(exc, f"read '{self.name}'", self.name)
                if isinstance(err, StoreUnavailable):
                    self.store._reset()
                raise err from None
            if not data:
                return
            offset += len(data)
            yield data

    def close(self) -> None:
        if self.raw is not None:
            with contextlib.suppress(Exception):  # the connection is gone: so is the handle
                self.raw.close()
            self.raw = None


def version_tag(size: int, written: Any) -> str:
    """A file's stand-in etag: its size and last write time (to the microsecond, as both a directory
    listing and a CREATE report it)."""
    return f"{size}-{round(_stamp(written) * 1e6)}"


def _stamp(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
