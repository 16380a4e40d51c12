"""The model's TDS listener: one thread per connection, PRELOGIN and LOGIN7, then SQL batches.

`ModelServer(state_dir, **options)` runs it in-process (`with ModelServer(...) as srv: srv.port`); the
command line (`python -m tests.mssql_model`) runs the same thing in its own process.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from tests.mssql_model import tokens
from tests.mssql_model.errors import SqlError, message
from tests.mssql_model.instance import Config, Instance, Session
from tests.mssql_model.session import Connection, kill_session
from tests.mssql_model.tds import (
    PKT_ATTENTION,
    PKT_LOGIN7,
    PKT_PRELOGIN,
    PKT_RPC,
    PKT_SQL_BATCH,
    Attention,
    ClientGone,
    Output,
    parse_login7,
    prelogin_response,
    read_message,
)


class ModelServer:
    """A SQL Server restore model listening on a loopback port. Not a SQL Server: a test double."""

    def __init__(self, state_dir: Path | str, **options: Any) -> None:
        self.config = Config(state_dir=Path(state_dir), **options)
        self.instance = Instance(self.config)
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.port = 0

    def start(self) -> ModelServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.config.host, self.config.port))
        listener.listen(64)
        self._listener = listener
        self.port = listener.getsockname()[1]
        thread = threading.Thread(target=self._accept, name="mssql-model-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        if not self.config.durable:
            flusher = threading.Thread(target=self._flush, name="mssql-model-flush", daemon=True)
            flusher.start()
            self._threads.append(flusher)
        return self

    def _flush(self) -> None:
        while not self._stopping.wait(0.5):
            self.instance.flush()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        with self.instance.lock:
            sessions = list(self.instance.sessions.values())
        for session in sessions:
            kill_session(session)
        for thread in self._threads:
            thread.join(timeout=5)
        self.instance.flush()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(sock,), name="mssql-model-conn", daemon=True)
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _serve(self, sock: socket.socket) -> None:
        session: Session | None = None
        try:
            session = self._login(sock)
            if session is not None:
                self._loop(sock, session)
        except (ClientGone, OSError, struct.error):
            pass
        finally:
            if session is not None:
                with self.instance.lock:
                    self.instance.sessions.pop(session.spid, None)
            with contextlib.suppress(OSError):
                sock.close()

    def _login(self, sock: socket.socket) -> Session | None:
        config = self.config
        kind, payload = read_message(sock)
        if kind == PKT_PRELOGIN:
            out = Output(sock)
            out.add(prelogin_response(config.version_tuple))
            out.end()
            kind, payload = read_message(sock)
        if kind != PKT_LOGIN7:
            return None
        login = parse_login7(payload)
        tds = (
            max(tokens.TDS71, min(login.tds_version, tokens.TDS74))
            if login.tds_version >> 24 >= 0x71
            else (tokens.TDS71)
        )
        packet = login.packet_size if 512 <= login.packet_size <= 32767 else 4096
        out = Output(sock, packet)
        with self.instance.lock:
            record = self.instance.state.logins.get(login.user.lower())
        if record is None or record.password != login.password:
            self._refuse(out, tds, message(18456, login.user, state=8 if record else 5))
            return None
        session = Session(self.instance.new_spid(), record, sock, host=login.host, program=login.app, tds=tds)
        reply = Connection(self.instance, session, out, tds)
        wanted = login.database or "master"
        try:
            database = reply.open_database(wanted)
        except SqlError:
            self._refuse(out, tds, message(4060, wanted), message(18456, login.user, state=1))
            return None
        session.database = database
        with self.instance.lock:
            self.instance.sessions[session.spid] = session
        out.add(tokens.env_database(database, "master"))
        out.add(tokens.message_token(message(5701, database), config.server_name, tds))
        out.add(tokens.env_collation())
        out.add(tokens.env_language("us_english"))
        out.add(tokens.message_token(message(5703, "us_english"), config.server_name, tds))
        out.add(tokens.loginack(tds, config.version_tuple))
        out.add(tokens.env_packet_size(packet, 4096))
        out.add(tokens.done(tokens.DONE_FINAL, 0, tds))
        out.end()
        return session

    def _refuse(self, out: Output, tds: int, *messages: Any) -> None:
        for msg in messages:
            out.add(tokens.message_token(msg, self.config.server_name, tds))
        out.add(tokens.done(tokens.DONE_ERROR, 0, tds))
        out.end()

    def _loop(self, sock: socket.socket, session: Session) -> None:
        tds = session.tds
        out = Output(sock, 4096)
        while True:
            kind, payload = read_message(sock)
            out = Output(sock, out.packet_size)
            reply = Connection(self.instance, session, out, tds)
            if kind == PKT_ATTENTION:
                out.add(tokens.done(tokens.DONE_ATTN, 0, tds))
                out.end()
                continue
            if kind == PKT_RPC:
                reply.info(message(102, "RPC"))
                out.add(tokens.done(tokens.DONE_ERROR, 0, tds))
                out.end()
                continue
            if kind != PKT_SQL_BATCH:
                return
            text = _batch_text(payload, tds)
            try:
                reply.run_batch(text)
            except Attention:
                out.buffer.clear()
                out.add(tokens.done(tokens.DONE_ATTN, 0, tds))
                out.end()


def _batch_text(payload: bytes, tds: int) -> str:
    """SQL batch payload: from TDS 7.2 on, ALL_HEADERS (a total length, then headers) comes first."""
    if tds >= tokens.TDS72 and len(payload) >= 4:
        total = struct.unpack_from("<I", payload, 0)[0]
        if 4 <= total <= len(payload):
            payload = payload[total:]
    return payload.decode("utf-16-le", "replace")
