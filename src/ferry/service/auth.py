"""The API's bearer token: made on first start, shown once, stored only as a salted hash.

Server side: `ensure_token(folder)` makes the token the first time and returns it (`ferry serve` prints it
once); later starts return None because only the hash is kept (`api-token.hash`, mode 0600).
`reset_token(folder)` replaces it. `TokenVerifier(folder)` is the API's `token_check`.

Client side: `client_token()` finds the token a user gave or kept: `--token` / `FERRY_TOKEN` first, then
`~/.config/ferry/token` (written only when asked, by `save_token`), then `api-token` in the data folder (a
file Ferry never writes by itself).

Nothing here logs or prints a token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path

from ferry.core.errors import UsageError

HASH_FILE = "api-token.hash"
KEPT_TOKEN_FILE = "api-token"  # only if the user chose to keep the plain token in the data folder
_FORMAT = "ferry-token-v1"


def data_folder() -> Path:
    """Ferry's data folder: FERRY_HOME, else $XDG_DATA_HOME/ferry, else ~/.local/share/ferry.

    It holds the state store's SQLite file, the token's hash and the embedded Temporal's database.
    """
    env = os.environ.get("FERRY_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "ferry"


def config_token_path() -> Path:
    """Where a user may keep the plain token for the CLI: $XDG_CONFIG_HOME/ferry/token."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "ferry" / "token"


def _digest(salt: bytes, token: str) -> str:
    # The token carries 256 random bits, so a keyed SHA-256 is enough: there is nothing for a slow
    # password hash to protect against. The salt makes equal tokens on two hosts hash differently.
    return hmac.new(salt, token.encode(), hashlib.sha256).hexdigest()


def _hash_line(token: str) -> str:
    salt = secrets.token_bytes(16)
    return f"{_FORMAT}$sha256${salt.hex()}${_digest(salt, token)}\n"


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def _write_private(path: Path, text: str, *, exclusive: bool) -> bool:
    """Write `text` to `path` with mode 0600 from the start (never briefly world-readable).

    exclusive: fail (return False) when the file exists, so two servers starting at once agree on one
    token. Otherwise the file is replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path if exclusive else path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        if exclusive:
            return False
        raise
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if not exclusive:
        os.replace(target, path)
    return True


def ensure_token(folder: Path) -> str | None:
    """The new plain token when this is the first start (show it once), None when a token exists."""
    token = _new_token()
    if _write_private(folder / HASH_FILE, _hash_line(token), exclusive=True):
        return token
    return None


def reset_token(folder: Path) -> str:
    """Replace the token (`ferry serve --reset-token`); the old one stops working at once."""
    token = _new_token()
    _write_private(folder / HASH_FILE, _hash_line(token), exclusive=False)
    return token


class TokenVerifier:
    """`token_check` for the API: compares in constant time against the stored hash.

    The hash file is read again when it changes, so a `--reset-token` takes effect on a running server.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / HASH_FILE
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._salt = b""
        self._expected = ""
        self._load()

    def _load(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise UsageError(
                f"no API token in '{self.path.parent}'",
                "start `ferry serve` once to make one, or run `ferry serve --reset-token`",
            ) from None
        key = (st.st_mtime_ns, st.st_size)
        if key == self._seen:
            return
        parts = self.path.read_text().strip().split("$")
        if len(parts) != 4 or parts[0] != _FORMAT or parts[1] != "sha256":
            raise UsageError(
                f"'{self.path}' is not a Ferry token hash",
                "run `ferry serve --reset-token` to make a new token",
            )
        self._salt, self._expected, self._seen = bytes.fromhex(parts[2]), parts[3], key

    def __call__(self, token: str) -> bool:
        with self._lock:
            try:
                self._load()
            except (UsageError, OSError, ValueError):
                return False  # the hash file went away or was damaged: refuse everyone, never everyone in
            salt, expected = self._salt, self._expected
        return hmac.compare_digest(_digest(salt, token), expected)


def save_token(token: str, path: Path | None = None) -> Path:
    """Keep the plain token for the CLI (only when the user asks, e.g. `ferry serve --save-token`)."""
    where = path or config_token_path()
    _write_private(where, token + "\n", exclusive=False)
    return where


def client_token(given: str | None, folder: Path | None = None) -> str | None:
    """The token the CLI sends: the one given (`--token` or FERRY_TOKEN), else one the user kept."""
    if given:
        return given.strip()
    for path in (config_token_path(), (folder or data_folder()) / KEPT_TOKEN_FILE):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return None
