"""Ferry's web console: watch and drive migrations in a browser, served by `ferry serve` at `/`.

Server-rendered (Jinja2 templates, every value escaped) with htmx for the live parts, both shipped in
this package (static/htmx.min.js with its license): no build step, nothing fetched from elsewhere.

It is a client of the REST API like the CLI, not a second way in: its pages call the API's routes
in-process with the signed-in user's token (api.py), and it imports nothing of the service but what
`create_app` hands it (the API app). The parts:

- console.py: the ASGI app the API's guard hands `/` and `/console/...` to;
- gate.py: sessions and CSRF checked before a request's body is read, the answers' security headers;
- sessions.py: the signed-in browsers (a session id in an HttpOnly cookie, the token on the server);
- pages.py, newpage.py: the pages and actions; views.py: what they show, from the API's JSON;
- lag.py: the replay lag samples and their SVG chart.
"""

from __future__ import annotations

from ferry.web.console import Console

__all__ = ["Console"]
