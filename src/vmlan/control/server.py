"""``vmlan daemon``: the API served by uvicorn inside vmlan's own event loop, on a private unix socket.

The loop is vmlan's (uvloop when present); uvicorn's ``Server.serve`` runs as a task beside the links,
so a request and a frame never wait on each other's thread. The socket is ``<runtime dir>/vmlan.sock``,
mode 0600 in a 0700 directory; each connection's SO_PEERCRED is checked too and a connection from
another uid is closed before a byte is read (root's daemon serves root alone).

SIGTERM/SIGINT: the API stops, every network is stopped (state kept: a restart brings back the ones that
were running), the socket is removed; exit status 0. ``kill -9`` loses nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from vmlan.control.api import create_app
from vmlan.control.daemon import Daemon
from vmlan.control.paths import SOCKET_NAME, private_dir
from vmlan.control.state import StateError

log = logging.getLogger("vmlan")
_UCRED = struct.Struct("iII")


def peer_uid(sock: Any) -> int | None:
    """The uid at the other end of a unix socket (SO_PEERCRED), None if it cannot be told."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


class OwnerOnlyProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, refusing peers whose uid is not the daemon's."""

    owner_uid = os.geteuid()
    refused = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        uid = peer_uid(transport.get_extra_info("socket"))
        if uid is None or uid != self.owner_uid:
            OwnerOnlyProtocol.refused += 1
            log.warning("API: refused a connection from uid %s", uid)
            transport.abort()
            return
        super().connection_made(transport)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen_unix(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600 from the start (umask while binding), replacing a
    stale socket file (never another kind of file)."""
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        import stat

        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise OSError(f"{path}: another vmlan daemon is listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(daemon: Daemon, socket_file: Path | None = None, ready: asyncio.Event | None = None) -> int:
    """Open the daemon, serve the API until SIGTERM/SIGINT, close. Returns the exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.open()
    except (StateError, OSError) as exc:
        sys.stderr.write(f"vmlan daemon: {exc}\n")
        return 1
    path = socket_file or daemon.runtime_dir / SOCKET_NAME
    if socket_file is None:
        private_dir(path.parent)
    else:  # a directory the user named: made private if new, left as it is otherwise
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        sock = listen_unix(path)
    except OSError as exc:
        sys.stderr.write(f"vmlan daemon: cannot listen on {path}: {exc.strerror or exc}\n")
        await daemon.close()
        return 1
    config = uvicorn.Config(create_app(daemon), http=OwnerOnlyProtocol, lifespan="off", log_level="warning",
                            access_log=False, timeout_graceful_shutdown=2)
    server = _Server(config)
    task = loop.create_task(server.serve(sockets=[sock]))
    waiter = loop.create_task(stop.wait())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    log.info("API on %s (state %s)", path, daemon.state_dir)
    if ready is not None:
        ready.set()
    sys.stderr.write(f"vmlan daemon: ready on {path}\n")
    sys.stderr.flush()
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 5)
    waiter.cancel()
    await daemon.close()
    with contextlib.suppress(OSError):
        path.unlink()
    sock.close()
    return 0


USAGE = """\
usage: vmlan daemon [--state-dir DIR] [--runtime-dir DIR] [--socket PATH] [--auto-mode auto|rootless] [-v|-q]
"""


def main(argv: list[str]) -> int:
    """``vmlan daemon``: parse the options, run the loop."""
    from vmlan.control.paths import runtime_dir, state_dir
    from vmlan.io.loop import new_event_loop
    from vmlan.io.sockopt import raise_fd_limit

    state, run, sock_path, auto_mode, level = state_dir(), runtime_dir(), None, "auto", logging.INFO
    args = list(argv)
    while args:
        opt = args.pop(0)
        if opt in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        if opt in ("-v", "--verbose"):
            level = logging.DEBUG
            continue
        if opt in ("-q", "--quiet"):
            level = logging.WARNING
            continue
        name, eq, value = opt.partition("=")
        if name not in ("--state-dir", "--runtime-dir", "--socket", "--auto-mode"):
            sys.stderr.write(f"vmlan daemon: unknown option '{opt}'\n{USAGE}")
            return 2
        if not eq:
            if not args:
                sys.stderr.write(f"vmlan daemon: {name} needs a value\n")
                return 2
            value = args.pop(0)
        if name == "--state-dir":
            state = Path(value)
        elif name == "--runtime-dir":
            run = Path(value)
        elif name == "--socket":
            sock_path = Path(value)
        else:
            if value not in ("auto", "rootless"):
                sys.stderr.write(f"vmlan daemon: --auto-mode expects auto or rootless (got '{value}')\n")
                return 2
            auto_mode = value
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vmlan: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    raise_fd_limit()
    daemon = Daemon(state, run, loop, auto_mode=auto_mode)
    try:
        return loop.run_until_complete(serve(daemon, sock_path))
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
