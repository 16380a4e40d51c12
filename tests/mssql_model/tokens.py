"""TDS token streams the model sends, and the column types of its result sets ([MS-TDS] 2.2.5, 2.2.7).

Each function returns one token's bytes. `tds` is the TDS version the login settled on (0x71000001 for
7.1 ... 0x74000004 for 7.4): from 7.2 on, UserType, DONE row counts and message line numbers are wider,
and DATETIME2 needs 7.3 (older clients get it as NVARCHAR, as SQL Server does).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from tests.mssql_model.errors import Message

TDS71 = 0x71000001
TDS72 = 0x72090002
TDS73 = 0x730B0003
TDS74 = 0x74000004

# SQL_Latin1_General_CP1_CI_AS: LCID 0x0409, case/kana/width insensitive, sort id 52.
COLLATION = bytes.fromhex("0904D00034")

COLMETADATA = 0x81
ROW = 0xD1
ERROR = 0xAA
INFO = 0xAB
LOGINACK = 0xAD
ENVCHANGE = 0xE3
RETURNSTATUS = 0x79
DONE = 0xFD
DONEPROC = 0xFE
DONEINPROC = 0xFF

DONE_FINAL = 0x00
DONE_MORE = 0x01
DONE_ERROR = 0x02
DONE_INXACT = 0x04
DONE_COUNT = 0x10
DONE_ATTN = 0x20

_SQL_EPOCH = datetime(1900, 1, 1)
_DATE_EPOCH = date(1, 1, 1)


def wide(tds: int) -> bool:
    return tds >= TDS72


def b_varchar(text: str) -> bytes:
    raw = text.encode("utf-16-le")
    return bytes([len(raw) // 2]) + raw


def us_varchar(text: str) -> bytes:
    raw = text.encode("utf-16-le")
    return struct.pack("<H", len(raw) // 2) + raw


@dataclass(frozen=True)
class ColType:
    """A column's SQL type: `kind` is one of the names in `_ENCODERS`; `size` is the NVARCHAR/VARBINARY
    length or the DATETIME2 scale; `precision`/`scale` are for DECIMAL."""

    kind: str
    size: int = 0
    precision: int = 0
    scale: int = 0


NVARCHAR = ColType("nvarchar", 256)
NVARCHAR_LONG = ColType("nvarchar", 4000)
INT = ColType("int")
BIGINT = ColType("bigint")
SMALLINT = ColType("smallint")
TINYINT = ColType("tinyint")
BIT = ColType("bit")
LSN = ColType("decimal", precision=25, scale=0)
FLOAT = ColType("float")
DATETIME = ColType("datetime")
DATETIME2 = ColType("datetime2", 7)
GUID = ColType("uniqueidentifier")
VARBINARY = ColType("varbinary", 85)

_INT_SIZES = {"tinyint": 1, "smallint": 2, "int": 4, "bigint": 8}


def _decimal_size(precision: int) -> int:
    return 5 if precision <= 9 else 9 if precision <= 19 else 13 if precision <= 28 else 17


def type_info(col: ColType, tds: int) -> bytes:
    kind = col.kind
    if kind in _INT_SIZES:
        return bytes([0x26, _INT_SIZES[kind]])
    if kind == "bit":
        return bytes([0x68, 1])
    if kind == "decimal":
        return bytes([0x6A, _decimal_size(col.precision), col.precision, col.scale])
    if kind == "float":
        return bytes([0x6D, 8])
    if kind == "datetime":
        return bytes([0x6F, 8])
    if kind == "datetime2":
        if tds < TDS73:
            return type_info(ColType("nvarchar", 27), tds)
        return bytes([0x2A, col.size])
    if kind == "uniqueidentifier":
        return bytes([0x24, 16])
    if kind == "varbinary":
        return bytes([0xA5]) + struct.pack("<H", col.size)
    return bytes([0xE7]) + struct.pack("<H", col.size * 2) + COLLATION


def encode_value(col: ColType, value: object, tds: int) -> bytes:
    """One value of a ROW token. `value` is a Python value of the column's kind, or None for NULL."""
    kind = col.kind
    if kind in _INT_SIZES:
        if value is None:
            return b"\x00"
        n = _INT_SIZES[kind]
        return bytes([n]) + int(str(value)).to_bytes(n, "little", signed=kind != "tinyint")
    if kind == "bit":
        return b"\x00" if value is None else bytes([1, 1 if value else 0])
    if kind == "decimal":
        if value is None:
            return b"\x00"
        size = _decimal_size(col.precision)
        number = Decimal(str(value)).scaleb(col.scale).to_integral_value()
        sign = 0 if number < 0 else 1
        return bytes([size, sign]) + int(abs(number)).to_bytes(size - 1, "little")
    if kind == "float":
        return b"\x00" if value is None else b"\x08" + struct.pack("<d", float(str(value)))
    if kind in ("datetime", "datetime2"):
        return _encode_datetime(col, value, tds)
    if kind == "uniqueidentifier":
        if value is None:
            return b"\x00"
        return b"\x10" + uuid.UUID(str(value)).bytes_le
    if kind == "varbinary":
        if value is None:
            return b"\xff\xff"
        raw = value if isinstance(value, bytes) else bytes.fromhex(str(value))
        return struct.pack("<H", len(raw)) + raw
    if value is None:
        return b"\xff\xff"
    raw = str(value).encode("utf-16-le")[: col.size * 2]
    return struct.pack("<H", len(raw)) + raw


def _as_datetime(value: object) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime.fromisoformat(str(value)).replace(tzinfo=None)


def _encode_datetime(col: ColType, value: object, tds: int) -> bytes:
    if col.kind == "datetime2" and tds < TDS73:
        text = None if value is None else _as_datetime(value).isoformat(sep=" ")
        return encode_value(ColType("nvarchar", 27), text, tds)
    if value is None:
        return b"\x00"
    moment = _as_datetime(value)
    if col.kind == "datetime":
        days = (moment.date() - _SQL_EPOCH.date()).days
        seconds = moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6
        return b"\x08" + struct.pack("<iI", days, round(seconds * 300))
    scale = col.size
    units = (moment.hour * 3600 + moment.minute * 60 + moment.second) * 10**scale
    units += moment.microsecond * 10**scale // 1_000_000
    time_len = 3 if scale <= 2 else 4 if scale <= 4 else 5
    days = (moment.date() - _DATE_EPOCH).days
    encoded: bytes = units.to_bytes(time_len, "little") + days.to_bytes(3, "little")
    return bytes([time_len + 3]) + encoded


def colmetadata(columns: list[tuple[str, ColType]], tds: int) -> bytes:
    out = bytearray([COLMETADATA])
    out += struct.pack("<H", len(columns))
    for name, col in columns:
        out += struct.pack("<I", 0) if wide(tds) else struct.pack("<H", 0)
        out += struct.pack("<H", 0x0001)  # nullable
        out += type_info(col, tds)
        out += b_varchar(name)
    return bytes(out)


def row(columns: list[tuple[str, ColType]], values: tuple[object, ...] | list[object], tds: int) -> bytes:
    out = bytearray([ROW])
    for (_, col), value in zip(columns, values, strict=True):
        out += encode_value(col, value, tds)
    return bytes(out)


def message_token(msg: Message, server: str, tds: int) -> bytes:
    # Informational messages (severity 10 and below in sys.messages) travel as INFO with class 0: this
    # is how SQL Server sends "Changed database context" or STATS progress, and why clients such as
    # pymssql do not treat them as errors.
    severity = msg.severity if msg.is_error else 0
    body = struct.pack("<IBB", msg.number, msg.state, severity)
    body += us_varchar(msg.text) + b_varchar(server) + b_varchar("")
    body += struct.pack("<I", 1) if wide(tds) else struct.pack("<H", 1)
    kind = ERROR if msg.is_error else INFO
    return bytes([kind]) + struct.pack("<H", len(body)) + body


def done(status: int, count: int, tds: int, token: int = DONE, curcmd: int = 0) -> bytes:
    head = struct.pack("<BHH", token, status, curcmd)
    return head + (struct.pack("<Q", count) if wide(tds) else struct.pack("<I", count & 0xFFFFFFFF))


def returnstatus(value: int) -> bytes:
    return struct.pack("<Bi", RETURNSTATUS, value)


def _envchange(kind: int, body: bytes) -> bytes:
    payload = bytes([kind]) + body
    return bytes([ENVCHANGE]) + struct.pack("<H", len(payload)) + payload


def env_database(new: str, old: str) -> bytes:
    return _envchange(1, b_varchar(new) + b_varchar(old))


def env_language(new: str) -> bytes:
    return _envchange(2, b_varchar(new) + b_varchar(""))


def env_packet_size(new: int, old: int) -> bytes:
    return _envchange(4, b_varchar(str(new)) + b_varchar(str(old)))


def env_collation() -> bytes:
    return _envchange(7, bytes([len(COLLATION)]) + COLLATION + b"\x00")


def env_transaction(kind: int, descriptor: int) -> bytes:
    """8 begin (new descriptor), 9 commit and 10 rollback (old descriptor)."""
    value = struct.pack("<Q", descriptor)
    if kind == 8:
        return _envchange(kind, b"\x08" + value + b"\x00")
    return _envchange(kind, b"\x00\x08" + value)


def loginack(tds: int, version: tuple[int, int, int]) -> bytes:
    major, minor, build = version
    body = bytes([1]) + struct.pack(">I", tds) + b_varchar("Microsoft SQL Server")
    body += bytes([major, minor, build >> 8 & 0xFF, build & 0xFF])
    return bytes([LOGINACK]) + struct.pack("<H", len(body)) + body
