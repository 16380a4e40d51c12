"""Recovery configuration: how Ferry sets a restored data directory up to replay WAL from the archive.

PostgreSQL 12 and later read recovery settings from the ordinary configuration; a signal file in the data
directory says which recovery to run: `standby.signal` replays until promoted (online migrations),
`recovery.signal` replays to the end of the archive or a target LSN and promotes (offline ones).

Ferry writes its settings into `postgresql.auto.conf` (read last, so they win over postgresql.conf) as one
marked block, keeping the source's own ALTER SYSTEM lines except those it sets, and an `hba_file` of its
own: while Ferry owns the server, only the OS user and root reach it, through a socket in a 0700 folder.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path

from ferry.engines.postgres.archive import conf_quote
from ferry.engines.postgres.fileops import write_file
from ferry.engines.postgres.server import TargetServer
from ferry.engines.postgres.targetdir import Phase, TargetError
from ferry.engines.postgres.wal import parse_lsn

RETRY_INTERVAL = "1s"  # wal_retrieve_retry_interval of a target in recovery

_AUTO_BEGIN = "# --- Ferry: recovery from the archive (rewritten by Ferry; edits here are lost) ---"
_AUTO_END = "# --- end of Ferry's settings ---"
_HBA = (
    "# Ferry owns this server until cutover: only the OS user and root reach its socket folder.\n"
    "local all all trust\n"
)
# pg_control records the limits the source ran with; hot standby refuses to start below them.
_CONTROL_LIMITS = (
    ("max_connections setting", "max_connections"),
    ("max_worker_processes setting", "max_worker_processes"),
    ("max_wal_senders setting", "max_wal_senders"),
    ("max_prepared_xacts setting", "max_prepared_transactions"),
    ("max_locks_per_xact setting", "max_locks_per_transaction"),
)


def configure(
    target: TargetServer,
    online: bool,
    restore_command: str,
    recovery_target_lsn: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> None:
    """Set `target`'s unpacked data directory up for recovery from the archive (PostgresTarget.configure
    documents the arguments). The server must be stopped."""
    phase = target.phase()
    if phase in (Phase.NEW, Phase.INTERRUPTED):
        raise TargetError(
            f"target '{target.root}' has no complete data directory to configure", "run restore_base first"
        )
    if phase is Phase.PROMOTED:
        raise TargetError(f"target '{target.root}' is already promoted", "configure a new target folder")
    if target.cluster.is_running():
        raise TargetError(
            f"the server of target '{target.root}' is running", "stop it before changing its recovery setup"
        )
    if recovery_target_lsn is not None:
        parse_lsn(recovery_target_lsn)  # ValueError names the accepted form
    data, owner = target.data, target.owner
    for carried in ("postmaster.pid", "postmaster.opts"):
        with contextlib.suppress(FileNotFoundError):
            (data / carried).unlink()
    signal, other = ("standby.signal", "recovery.signal") if online else ("recovery.signal", "standby.signal")
    with contextlib.suppress(FileNotFoundError):
        (data / other).unlink()
    write_file(data / signal, b"", owner=owner)
    hba = target.conf_dir / "pg_hba.conf"
    write_file(hba, _HBA.encode(), mode=0o644, durable=False)
    # Debian-style servers keep these in /etc, so the backup may lack them: the server needs them.
    for name in ("postgresql.conf", "pg_ident.conf"):
        if not (data / name).exists():
            write_file(data / name, b"# written by Ferry: the source kept this file elsewhere\n", owner=owner)
    values: dict[str, str] = {
        "port": str(target.record.port),
        "listen_addresses": conf_quote("127.0.0.1"),
        "unix_socket_directories": conf_quote(str(target.socket_dir)),
        "hba_file": conf_quote(str(hba)),
        "restore_command": conf_quote(restore_command),
        "recovery_target_timeline": conf_quote("latest"),
        "hot_standby": "on",
        # How often a standby waiting for the next segment runs restore_command again (a shell each time,
        # per target). Ferry wakes it at once when the prefetcher delivers (wake_recovery).
        "wal_retrieve_retry_interval": conf_quote(RETRY_INTERVAL),
        "archive_mode": "off",
        "archive_command": conf_quote(""),
        # A source that was itself a standby carries its primary's address: never connect there.
        "primary_conninfo": conf_quote(""),
        "primary_slot_name": conf_quote(""),
        "archive_cleanup_command": conf_quote(""),
        "recovery_end_command": conf_quote(""),
        "recovery_min_apply_delay": "0",
        "logging_collector": "off",
    }
    control = target.control_data()
    for key, setting in _CONTROL_LIMITS:
        if control.get(key, "").isdigit():
            values[setting] = control[key]
    if recovery_target_lsn is not None:
        values["recovery_target_lsn"] = conf_quote(recovery_target_lsn)
        values["recovery_target_action"] = conf_quote("promote")
        values["recovery_target_inclusive"] = "on"
    values.update(settings or {})
    write_auto_conf(data / "postgresql.auto.conf", values, owner)


def write_auto_conf(path: Path, values: Mapping[str, str], owner: tuple[int, int] | None) -> None:
    """Keep the source's ALTER SYSTEM settings except those Ferry sets (the file is read top to bottom
    and the last value wins, but dropping duplicates keeps `SHOW`'s sourceline honest)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = ["# Do not edit this file manually!", "# It will be overwritten by the ALTER SYSTEM command."]
    keep: list[str] = []
    inside = False
    for line in lines:
        if line == _AUTO_BEGIN:
            inside = True
            continue
        if line == _AUTO_END:
            inside = False
            continue
        key = re.match(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=|\s)", line)
        if inside or (key and key.group(1).lower() in values):
            continue
        keep.append(line)
    block = [_AUTO_BEGIN, *(f"{k} = {v}" for k, v in values.items()), _AUTO_END]
    write_file(path, ("\n".join(keep + block) + "\n").encode(), owner=owner)
