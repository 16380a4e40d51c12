"""The console's gate: who may use a console page, checked before any request body is read.

- A page asked for without a live session is answered with a redirect to the login form (a live refresh
  made by htmx gets 401 with `HX-Redirect`, so the browser goes there too). Any other method without a
  session is answered 401 at once, its body unread.
- A state-changing request (every POST) of a session must come from the console itself: a cross-site
  `Sec-Fetch-Site` or a foreign `Origin` is refused with 403 before the body is read, and the session's
  CSRF token must come back, in the `X-CSRF-Token` header or the form's `csrf_token` field (403 otherwise).
  The session cookie is SameSite=Strict as well: three locks, each enough on its own in a current browser.
- Bodies are HTML forms (`application/x-www-form-urlencoded`, 415 otherwise) of at most MAX_FORM bytes
  (413 beyond, as soon as the Content-Length says so or the body passes the limit).
- Every console answer carries a strict Content-Security-Policy (scripts and styles of the console's own
  static files only, no inline script), no framing, no caching, and no referrer to other sites.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.types import Message, Receive, Scope, Send

SESSION_COOKIE = "ferry_session"
LOGIN_COOKIE = "ferry_login"  # ties the login form to the browser that asked for it (login CSRF)
MAX_FORM = 1024 * 1024  # a bulk cutover of 10,000 selected migrations is about 200 KB
FORM_TYPE = "application/x-www-form-urlencoded"

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with the forms' POSTs.
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]

Form = dict[str, list[str]]


def headers_of(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def cookies_of(headers: dict[str, str]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def cookie(name: str, value: str, path: str = "/", max_age: int | None = None, secure: bool = False) -> str:
    """A Set-Cookie value the page's scripts cannot read and no other site's request carries."""
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def with_security_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


def cross_site(scope: Scope, headers: dict[str, str]) -> bool:
    """A request another site's page made: the browser says so (Sec-Fetch-Site), or its Origin is not
    this server's."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin = headers.get("origin")
    if origin is None or origin == "null":  # nothing to judge by: the CSRF token and SameSite decide
        return False
    host = headers.get("host", "")
    return origin not in (f"{scope.get('scheme', 'http')}://{host}", f"http://{host}", f"https://{host}")


async def read_form(scope: Scope, receive: Receive, headers: dict[str, str]) -> Form | int:
    """The request's form, or the status that refuses it (413 too large, 415 not a form, 400)."""
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_FORM):
        return 413 if length.isdigit() else 400
    kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return 400
        body += message.get("body", b"")
        if len(body) > MAX_FORM:
            return 413
        if not message.get("more_body", False):
            break
    if not body:
        return {}
    if kind != FORM_TYPE:
        return 415
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20_000)
    except (UnicodeDecodeError, ValueError):
        return 400


async def answer(
    send: Send, status: int, text: str, headers: list[tuple[str, str]] | None = None, close: bool = False
) -> None:
    """A short plain-text answer (a refusal) with the console's headers."""
    payload = text.encode()
    out = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(payload)).encode())]
    out += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers or []]
    if close:  # the body was not read: the connection cannot carry another request
        out.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": payload})


def login_url(scope: Scope, prefix: str) -> str:
    """The login form, with the page asked for to come back to."""
    path = scope.get("path", "/")
    query = scope.get("query_string", b"").decode("latin-1")
    back = path + (f"?{query}" if query else "")
    if path.startswith(f"{prefix}/parts/"):  # a live fragment: come back to the page instead
        back = "/"
    return f"{prefix}/login?next={quote(back, safe='')}"


def nonce() -> str:
    return secrets.token_urlsafe(24)


def same_secret(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


def safe_next(value: str | None) -> str:
    """Where to go after the login: a path of this server only, never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


REFUSALS: dict[int, str] = {
    400: "The request could not be read.",
    401: "Sign in to the Ferry console first.",
    403: "This request did not come from the console page (its security token is missing or wrong): "
    "reload the page and try again.",
    413: "The request is too large.",
    415: "The console takes HTML forms only.",
}


def refusal_text(status: int) -> str:
    return REFUSALS.get(status, "The request was refused.")


Handler = Callable[[Scope, Receive, Send], Any]
