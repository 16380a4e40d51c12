"""Log sequence numbers.

SQL Server prints an LSN as numeric(25,0): vlf_seq * 10**15 + block_offset * 10**5 + slot. Ferry keeps
that integer: it orders exactly as the (vlf, block, slot) triple does, because block_offset < 10**10 and
slot < 10**5, and it is the form DBAs paste into RESTORE ... STOPATMARK and msdb queries.
"""

from __future__ import annotations

_VLF = 10**15
_BLOCK = 10**5


def sqlserver_lsn(vlf_seq: int, block_offset: int, slot: int) -> int:
    """The numeric(25,0) form of an LSN given as its three parts."""
    return vlf_seq * _VLF + block_offset * _BLOCK + slot


def sqlserver_lsn_parts(lsn: int) -> tuple[int, int, int]:
    """The (vlf_seq, block_offset, slot) triple of a numeric LSN, as `DBCC LOG` prints it."""
    vlf, rest = divmod(lsn, _VLF)
    block, slot = divmod(rest, _BLOCK)
    return vlf, block, slot


def parse_sqlserver_lsn(text: str) -> int:
    """Read an LSN typed by a user: numeric form `34000000016700004` or parts `34:167:4` (hex parts allowed
    as `0x22:0xa7:0x4`, as fn_dblog prints them). Raises ValueError with the accepted forms."""
    value = text.strip()
    if ":" in value:
        parts = value.split(":")
        if len(parts) != 3:
            raise ValueError(f"LSN '{text}' must have three parts, vlf:block:slot")
        return sqlserver_lsn(*(int(p, 0) for p in parts))
    if not value.isdigit():
        raise ValueError(f"LSN '{text}' is neither a decimal LSN nor vlf:block:slot")
    return int(value)
