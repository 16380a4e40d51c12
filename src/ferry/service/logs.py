"""The log of `ferry serve` and `ferry agent`: one line per record, nothing secret, nothing that fakes a line.

- Messages quote what others wrote (a source, a file name, a signal's name), so control characters in
  them are escaped: a newline in a source cannot start a forged log line, an escape sequence cannot
  repaint the terminal that follows the log.
- Secrets are masked in messages and tracebacks alike (core/redact.py): a location's password, a SAS.
- Expected errors (FerryError: a source that does not exist, a blocked chain) are logged by Ferry as one
  line where they happen; the SDK is told they are benign (activities.py), so it does not add a
  traceback for each. Tracebacks are for bugs.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from ferry.core.redact import escape_controls, redact_text

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SafeFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(redact_text(super().formatMessage(record)))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return escape_controls(redact_text(super().formatException(ei)), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return escape_controls(redact_text(super().formatStack(stack_info)), keep_newlines=True)


def configure(level: int = logging.WARNING, stream: TextIO | None = None) -> None:
    """Send every logger's records to `stream` (stderr) through the SafeFormatter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(SafeFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
