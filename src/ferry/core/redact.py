"""Secrets out of everything Ferry prints, logs, records or returns; control characters out of terminals.

A backup location may carry a credential: a password in its user info (`smb://user:pw@host/share`,
`postgresql://u:pw@db/x`, `s3://KEY:SECRET@bucket`) or a secret query parameter (an Azure SAS's `sig=`,
`?token=`, `password=`, `key=`...). Ferry keeps the location as given where it must use it (the state
store, mode 0600) and shows it only through these functions:

- `redact_location(text)`: one location; the password of its user info and the values of its secret query
  parameters become `***`. The user name and everything else stay, so a DBA still sees which share or
  container is meant. A plain path comes back unchanged.
- `redact_text(text)`: free text (an error message, a log line, a traceback): every URL in it redacted as
  above, and `name=value` pairs whose name is a secret's (connection strings, SDK messages) masked too.
- `redact_value(value)`: the same through the strings of a JSON-like value (event data, a status).
- `escape_controls(text)`: control characters (ESC, CR, LF, DEL, C1) as visible escapes (`\\x1b`, `\\n`),
  so a file name or a source cannot move a terminal's cursor, clear it, or split a log line.

Stdlib only: core is the bottom layer.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

MASK = "***"

# Parameter names whose values are secrets. In a URL's query, a name is secret when it contains one of
# these words once lowercased with its punctuation dropped (`X-Amz-Signature`, `access_token`, `AccountKey`):
# over-masking a harmless parameter costs nothing, missing a secret costs a credential.
_SECRET_WORDS = ("sig", "token", "password", "passwd", "pwd", "secret", "key", "credential", "sas", "auth")
# In free text the name must be one of these whole words, so that prose is left alone.
_SECRET_NAMES = (
    r"sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|token|sas|sas_?token|"
    r"access_?token|refresh_?token|password|passwd|pwd|secret|client_?secret|key|account_?key|"
    r"api_?key|access_?key|secret_?access_?key|aws_secret_access_key|sharedaccesssignature|"
    r"sharedaccesskey"
)
_PAIR = re.compile(rf"(?i)(?<![A-Za-z0-9_\-])({_SECRET_NAMES})(\s*=\s*)(?!\*\*\*)([^&;,\s'\"<>]+)")
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s'\"<>`]+")
_SCHEME = re.compile(r"(?i)^[a-z][a-z0-9+.\-]*://")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _secret_name(name: str) -> bool:
    flat = re.sub(r"[^a-z0-9]", "", unquote(name).lower())
    return any(word in flat for word in _SECRET_WORDS)


def _redact_query(query: str) -> str:
    parts = re.split(r"([&;])", query)
    for i in range(0, len(parts), 2):
        name, eq, value = parts[i].partition("=")
        if eq and value and _secret_name(name):
            parts[i] = f"{name}={MASK}"
    return "".join(parts)


def redact_location(text: str) -> str:
    """`text`, a location (URL or path), with its user info's password and secret parameters masked."""
    match = _SCHEME.match(text)
    if match is None:
        return text
    scheme, body = match.group(0), text[match.end() :]
    cut = min((i for i in (body.find("?"), body.find("#")) if i >= 0), default=len(body))
    head, tail = body[:cut], body[cut:]
    authority = head.split("/", 1)[0]
    at = authority.rfind("@")
    if at < 0 and "@" in head and ":" in head[: head.rfind("@")]:
        # A password with an unencoded '/' ends the authority early: the user info then runs to the last
        # '@' before the query. Masking a path that merely holds ':' and '@' is the lesser harm.
        at = head.rfind("@")
    if at >= 0:
        user, colon, password = head[:at].partition(":")
        if colon and password:
            head = f"{user}:{MASK}{head[at:]}"
    if tail:
        query, hash_, fragment = tail[1:].partition("#") if tail[0] == "?" else ("", "#", tail[1:])
        tail = (f"?{_redact_query(query)}" if tail[0] == "?" else "") + (
            f"#{_redact_query(fragment)}" if hash_ else ""
        )
    return f"{scheme}{head}{tail}"


def redact_text(text: str) -> str:
    """Every URL inside `text` redacted, and `name=secret` pairs outside URLs masked."""
    text = _URL.sub(lambda m: redact_location(m.group(0)), text)
    return _PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)


def redact_value(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, strings, numbers) with `redact_text` applied to every string."""
    if isinstance(value, str):
        return redact_text(value) if ("=" in value or "://" in value) else value
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with control characters shown as escapes (`\\x1b`); `keep_newlines` leaves `\\n` and `\\t`
    alone (a message of several lines), everything else is escaped either way."""
    return (_CONTROL if keep_newlines else _CONTROL_ALL).sub(_escape, text)


def safe(text: str) -> str:
    """What every human-readable output shows of untrusted text: redacted, one line, no escapes."""
    return escape_controls(redact_text(text))
