"""Things in a backup folder that are no files (FIFOs, sockets) are named for what they are and never opened;
a file with a WAL segment's name that is not a segment blocks a PostgreSQL migration, saying why."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from ferry.core.findings import Finding, Severity
from ferry.engines.postgres.grouping import not_segments
from ferry.engines.registry import all_engines
from ferry.pipeline.discover import scan
from ferry.stores.local import LocalStore


def test_fifos_and_sockets_are_named_and_never_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "000000010000000000000009")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "agent.sock"))
        (tmp_path / "empty.bak").write_bytes(b"")
        done: list[object] = []
        # A FIFO opened for reading waits for a writer: the scan must come back on its own.
        worker = threading.Thread(target=lambda: done.append(scan(LocalStore(tmp_path), all_engines())))
        worker.start()
        worker.join(20)
        assert done, "the scan hung on the FIFO"
    result = done[0]
    found = {f.info.key: f.finding for f in result.files}  # type: ignore[attr-defined]
    fifo, sock_finding = found["000000010000000000000009"], found["agent.sock"]
    assert fifo is not None and fifo.code == "not-a-file" and "named pipe (FIFO)" in fifo.message
    assert (
        sock_finding is not None and sock_finding.code == "not-a-file" and "a socket" in sock_finding.message
    )
    assert "being created" not in fifo.hint
    empty = found["empty.bak"]
    assert empty is not None and empty.code == "empty-file"


def test_a_file_named_like_a_segment_that_is_not_one_blocks() -> None:
    def finding(code: str, key: str) -> Finding:
        return Finding(code, Severity.WARNING, f"'{key}' ...", "", (key,))

    found = not_segments(
        [
            finding("not-a-file", "wal/000000010000000000000009"),
            finding("not-a-backup", "archive/2026/000000010000000000000005.gz"),
            finding("backup-truncated", "wal/00000001000000000000000A"),
            finding("empty-file", "wal/00000001000000000000000B"),  # a copy starting: replay says so
            finding("not-a-backup", "wal/README"),
            finding("file-changing", "wal/00000001000000000000000C"),
        ]
    )
    assert [f.files[0] for f in found] == [
        "wal/000000010000000000000009",
        "archive/2026/000000010000000000000005.gz",
        "wal/00000001000000000000000A",
    ]
    assert all(f.code == "wal-not-a-segment" and f.severity is Severity.ERROR and f.hint for f in found)
    assert "no regular file" in found[0].message and "shorter than a segment" in found[2].message
