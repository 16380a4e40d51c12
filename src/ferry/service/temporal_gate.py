"""The embedded Temporal's gate: the dev server in a network namespace of its own, reachable only through
a TLS port that asks every client for a certificate of Ferry's CA.

`temporal server start-dev` has no authentication and no TLS: anyone who reaches its port may read every
workflow and signal any of them, and its HTTP API listens on a second, random port. So `ferry serve`
(temporal_dev.py) does not start it directly. It starts this small process, handing it a listening socket
on 127.0.0.1:PORT and the certificates of DATA/tls; the process

1. leaves the host's network: unshare(CLONE_NEWNET) as root, else with a user namespace of its own (where
   the kernel allows unprivileged ones), and brings up the namespace's loopback;
2. starts the dev server there, on the namespace's 127.0.0.1: no other process of the host can reach it or
   its HTTP API, whatever its ports;
3. accepts TLS connections on the socket it was handed (made in the host's network before step 1, so it
   stays there), requires a client certificate signed by Ferry's CA, and pipes each connection's bytes to
   the dev server.

Where no namespace can be made (a container that forbids it), the dev server listens on the host's
127.0.0.1 as before: the gate still guards the port Ferry announces, the codec still keeps the data and
the signals safe, and `ferry serve` says at start that the dev server is exposed to local users.

It reports on --status-fd, one line: `isolated`, or `shared REASON`. Stdlib only, as a process of its own
(`python -m ferry.service.temporal_gate`): it dies with `ferry serve` (a parent-death signal) and takes
the dev server with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PR_SET_PDEATHSIG = 1
INNER_PORT = 7233
CHUNK = 256 * 1024


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def isolate() -> str | None:
    """Leave the host's network. None when done, else why it could not be."""
    uid, gid = os.getuid(), os.getgid()
    attempts = (
        [CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET] if os.geteuid() == 0 else [CLONE_NEWUSER | CLONE_NEWNET]
    )
    reason = "unknown"
    for flags in attempts:
        if _libc().unshare(flags) != 0:
            reason = os.strerror(ctypes.get_errno())
            continue
        if flags & CLONE_NEWUSER:
            # The same user inside as outside (mapped to root of the namespace): files keep their owner.
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        _loopback_up()
        return None
    return f"cannot make a network namespace: {reason}"


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    os.umask(0o077)
    with contextlib.suppress(Exception):
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def tls_context(folder: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(os.path.join(folder, "server.pem"), os.path.join(folder, "server.key"))
    ctx.load_verify_locations(os.path.join(folder, "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED  # no certificate of Ferry's CA, no connection
    ctx.set_alpn_protocols(["h2"])  # gRPC: the client insists on HTTP/2 being agreed
    return ctx


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def run(
    listener: socket.socket, ctx: ssl.SSLContext, upstream: int, server: subprocess.Popen[bytes]
) -> int:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gate = await asyncio.start_server(handle, sock=listener, ssl=ctx, ssl_handshake_timeout=10, limit=CHUNK)
    async with gate:
        while not stop.is_set() and server.poll() is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    code = server.poll()
    return code if code is not None else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferry-temporal-gate")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--tls-dir", required=True)
    parser.add_argument("--temporal", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("server_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    listener = socket.socket(fileno=args.listen_fd)
    ctx = tls_context(args.tls_dir)
    problem = isolate()
    port = INNER_PORT if problem is None else _free_port()
    with os.fdopen(args.status_fd, "w") as status:
        status.write("isolated\n" if problem is None else f"shared {problem}\n")
    extra = [a for a in args.server_args if a != "--"]
    cmd = [args.temporal, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
           "--db-filename", args.db, *extra]  # fmt: skip
    server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    try:
        return asyncio.run(run(listener, ctx, port, server))
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)


if __name__ == "__main__":
    sys.exit(main())
