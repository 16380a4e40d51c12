"""TDS 7.x transport: packets, PRELOGIN, LOGIN7 and a response writer that flushes as messages happen.

From [MS-TDS] 2.2.3 (packet header: type, status, big-endian length, SPID, packet id, window), 2.2.6.4
(LOGIN7: fixed part, then offset/length pairs into the record; passwords are sent with each byte's
nibbles swapped and XORed with 0xA5) and 2.2.6.5 (PRELOGIN options). The model answers PRELOGIN with
ENCRYPT_NOT_SUP, so a client that does not require encryption goes on in clear, login included.
"""

from __future__ import annotations

import select
import socket
import struct
from dataclasses import dataclass

PKT_SQL_BATCH = 0x01
PKT_RPC = 0x03
PKT_REPLY = 0x04
PKT_ATTENTION = 0x06
PKT_LOGIN7 = 0x10
PKT_PRELOGIN = 0x12

STATUS_EOM = 0x01
HEADER = struct.Struct(">BBHHBB")

ENCRYPT_NOT_SUP = 0x02


class ClientGone(Exception):
    """The client closed its connection (or the socket broke)."""


class Attention(Exception):
    """The client sent an attention (cancel) packet."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        try:
            chunk = sock.recv(n - len(chunks))
        except OSError as exc:
            raise ClientGone(str(exc)) from None
        if not chunk:
            raise ClientGone("connection closed")
        chunks += chunk
    return bytes(chunks)


def read_packet(sock: socket.socket) -> tuple[int, int, bytes]:
    kind, status, length, _spid, _pid, _win = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if length < HEADER.size:
        raise ClientGone(f"bad packet length {length}")
    return kind, status, _recv_exact(sock, length - HEADER.size)


def read_message(sock: socket.socket) -> tuple[int, bytes]:
    """One whole message (packets up to the end-of-message bit). An attention packet is a message."""
    kind, status, data = read_packet(sock)
    body = bytearray(data)
    while not status & STATUS_EOM and kind != PKT_ATTENTION:
        more_kind, status, data = read_packet(sock)
        if more_kind == PKT_ATTENTION:
            return PKT_ATTENTION, b""
        body += data
    return kind, bytes(body)


def poll_interrupt(sock: socket.socket) -> None:
    """Raise ClientGone if the client hung up, Attention if it asked to cancel; return at once otherwise.
    Called between steps of long statements, the way SQL Server notices a cancel between units of work."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        raise ClientGone("socket closed") from None
    if not readable:
        return
    try:
        head = sock.recv(HEADER.size, socket.MSG_PEEK)
    except OSError as exc:
        raise ClientGone(str(exc)) from None
    if not head:
        raise ClientGone("connection closed")
    if head[0] == PKT_ATTENTION:
        read_packet(sock)
        raise Attention()


class Output:
    """Buffers tokens of one response; `flush()` sends them now as non-final packets, `end()` sends the
    rest with the end-of-message bit. Flushing each INFO token is what lets a client see progress live."""

    def __init__(self, sock: socket.socket, packet_size: int = 4096) -> None:
        self.sock = sock
        self.packet_size = packet_size
        self.buffer = bytearray()
        self.packet_id = 1

    def add(self, token: bytes) -> None:
        self.buffer += token

    def _send(self, payload: bytes, final: bool) -> None:
        status = STATUS_EOM if final else 0
        header = HEADER.pack(PKT_REPLY, status, len(payload) + HEADER.size, 0, self.packet_id, 0)
        self.packet_id = (self.packet_id + 1) % 256
        try:
            self.sock.sendall(header + payload)
        except OSError as exc:
            raise ClientGone(str(exc)) from None

    def flush(self) -> None:
        room = self.packet_size - HEADER.size
        while self.buffer:
            chunk, self.buffer = bytes(self.buffer[:room]), self.buffer[room:]
            self._send(chunk, final=False)

    def end(self) -> None:
        room = self.packet_size - HEADER.size
        while len(self.buffer) > room:
            chunk, self.buffer = bytes(self.buffer[:room]), self.buffer[room:]
            self._send(chunk, final=False)
        self._send(bytes(self.buffer), final=True)
        self.buffer = bytearray()


def prelogin_response(version: tuple[int, int, int], instance_ok: bool = True) -> bytes:
    """VERSION, ENCRYPTION (not supported), INSTOPT, THREADID and MARS (off), then the terminator."""
    major, minor, build = version
    options = [
        (0x00, struct.pack(">BBHH", major, minor, build, 0)),
        (0x01, bytes([ENCRYPT_NOT_SUP])),
        (0x02, b"\x00" if instance_ok else b"\x01"),
        (0x03, b""),
        (0x04, b"\x00"),
    ]
    offset = len(options) * 5 + 1
    table = bytearray()
    data = bytearray()
    for token, value in options:
        table += struct.pack(">BHH", token, offset + len(data), len(value))
        data += value
    return bytes(table) + b"\xff" + bytes(data)


def prelogin_instance(payload: bytes) -> str | None:
    """The instance name a client asked for in PRELOGIN (INSTOPT), if any."""
    pos = 0
    while pos < len(payload) and payload[pos] != 0xFF:
        token, offset, length = struct.unpack_from(">BHH", payload, pos)
        if token == 0x02 and length > 1:
            return payload[offset : offset + length].rstrip(b"\x00").decode("ascii", "replace")
        pos += 5
    return None


@dataclass(frozen=True)
class Login:
    tds_version: int
    packet_size: int
    client_pid: int
    host: str
    user: str
    password: str
    app: str
    server: str
    library: str
    language: str
    database: str


def _unscramble(raw: bytes) -> bytes:
    out = bytearray()
    for b in raw:
        b ^= 0xA5
        out.append(((b & 0x0F) << 4) | (b >> 4))
    return bytes(out)


def parse_login7(payload: bytes) -> Login:
    _length, version, packet_size, _prog, pid = struct.unpack_from("<IIIII", payload, 0)

    def field(index: int, password: bool = False) -> str:
        offset, count = struct.unpack_from("<HH", payload, 36 + index * 4)
        raw = payload[offset : offset + count * 2]
        return (_unscramble(raw) if password else raw).decode("utf-16-le", "replace")

    return Login(
        tds_version=version,
        packet_size=packet_size,
        client_pid=pid,
        host=field(0),
        user=field(1),
        password=field(2, password=True),
        app=field(3),
        server=field(4),
        library=field(6),
        language=field(7),
        database=field(8),
    )
