"""Where store credentials come from, besides the environment: Ferry's credentials file.

The file is INI, at FERRY_CREDENTIALS_FILE or else ~/.config/ferry/credentials, readable by its owner
only (like ~/.pgpass, a file others can read is refused). One section per store, named by the store's
URL without secrets or path:

    [az://myaccount]
    account_key = ...          # or sas_token = ..., or connection_string = ...

    [smb://fileserver]         # or [smb://dba@fileserver], which wins for that user
    password = ...
    user = dba                 # used when the URL names no user
    domain = CORP

S3 keeps to boto3's own chain (environment, ~/.aws/credentials, instance roles).
"""

from __future__ import annotations

import configparser
import os
import stat
from pathlib import Path

from ferry.core.errors import UsageError


def credentials_path() -> Path:
    env = os.environ.get("FERRY_CREDENTIALS_FILE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base, "ferry", "credentials")


def section(*names: str) -> dict[str, str]:
    """The first of `names` present in the credentials file, as a dict (empty without a file)."""
    path = credentials_path()
    try:
        st = path.stat()
    except OSError:
        return {}
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"the credentials file '{path}' may be read by other users",
            f"make it private: chmod 600 '{path}'",
        )
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read the credentials file '{path}': {type(exc).__name__}",
            "it is an INI file with one [section] per store; see docs/stores.md",
        ) from None
    for name in names:
        if parser.has_section(name):
            return {k: v.strip() for k, v in parser.items(name)}
    return {}
