"""``vmlan dashboard``: the daemon's API and page from a loopback TCP port, for a browser.

The API listens on a unix socket only its owner can use; a browser speaks TCP. This proxy listens on a
loopback address and passes each authorised request to the daemon's socket for the invoking user. Any
user of the host can connect to a loopback port, so a random token is made at start and printed in the
URL's fragment (``#token=``: a browser never sends a fragment, so it reaches no server, log or Referer).
The page (``/``, ``/dashboard`` and its two files) is static and public; app.js keeps the token in
sessionStorage, which is per origin, port included, and sends it in an ``X-Vmlan-Token`` header with
every API request. There is no cookie: a browser sends cookies to every port of a host, so a cookie would
reach any web server another local user runs on a loopback port. A cross-site page cannot send that
header without a CORS preflight, and every preflight (any OPTIONS) is refused with no CORS header, so
another site cannot drive the API either. Only loopback addresses are accepted for ``--listen``; a Host
header naming anything but a loopback address or ``localhost`` is refused (DNS rebinding), as is an
Origin that is not the proxy's own.

One request per connection: the request goes upstream with ``Connection: close`` and the answer is
streamed back until the daemon closes (server-sent events included), so nothing here parses bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_LISTEN = "127.0.0.1:8470"
TOKEN_HEADER = b"x-vmlan-token"
MAX_HEAD = 65536
HEAD_TIMEOUT = 30.0
# the page and its files: static, the same for everyone, no data in them
PUBLIC = frozenset({"/", "/dashboard", "/dashboard/app.js", "/dashboard/style.css"})
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"cookie",
                  TOKEN_HEADER})


class ListenError(ValueError):
    """A ``--listen`` value that is not a loopback HOST:PORT; the message is one line."""


class ProxyError(Exception):
    """The port cannot be listened on; the message is one line."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` with a loopback HOST (``localhost`` is 127.0.0.1)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ListenError(f"--listen expects HOST:PORT (got '{text}')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ListenError(f"--listen expects a loopback address, 127.0.0.1 or [::1] (got '{text}')") from None
    if not addr.is_loopback:
        raise ListenError(f"--listen {text}: not a loopback address (the dashboard is for this host only)")
    return str(addr), int(port_text)


def _loopback_host(value: bytes) -> bool:
    """A Host header naming a loopback address or localhost (with any port)."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        host = text[1:text.find("]")] if "]" in text else ""
    else:
        host = text.rpartition(":")[0] if ":" in text else text
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Request:
    method: bytes
    target: str
    version: bytes
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def parse_head(head: bytes) -> Request | None:
    """The request line and headers, None when they are not HTTP/1.x."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1].startswith(b"/"):
        return None
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        key, colon, value = line.partition(b":")
        if not colon or not key or key != key.strip():
            return None
        headers.append((key, value.strip()))
    return Request(parts[0], parts[1].decode("latin-1"), parts[2], headers)


def _answer(status: str, detail: str) -> bytes:
    """A refusal or failure as the API gives one, ``{"detail": ...}``, so app.js shows it the same way."""
    data = json.dumps({"detail": detail}).encode()
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(data)}",
            "Connection: close", "Cache-Control: no-store"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data


def upstream_head(req: Request) -> bytes:
    """The request as it goes to the daemon: hop-by-hop headers, cookies and the token left out."""
    lines = [b" ".join((req.method, req.target.encode("latin-1"), req.version))]
    lines += [k + b": " + v for k, v in req.headers if k.lower() not in _HOP]
    return b"\r\n".join([*lines, b"Connection: close", b"", b""])


class Proxy:
    """Loopback TCP to the daemon's unix socket: the page for anyone, the API for holders of ``token``."""

    def __init__(self, upstream: Path, token: str | None = None) -> None:
        self.upstream = upstream
        self.token = token or secrets.token_urlsafe(24)
        self.refused = 0

    def _refuse(self, detail: str) -> bytes:
        self.refused += 1
        return _answer("403 Forbidden", f"vmlan dashboard: {detail}")

    def check(self, req: Request) -> bytes | None:
        """The refusal to send instead of proxying, None to proxy ``req``."""
        host = req.header(b"host")
        if host is None or not _loopback_host(host):
            return self._refuse("the Host header must name a loopback address")
        if req.method == b"OPTIONS":
            # a CORS preflight: no Access-Control-* header ever, so no other origin may send the token header
            return self._refuse("cross-origin requests are refused")
        origin = req.header(b"origin")
        if origin is not None and origin.lower() != b"http://" + host.lower():
            return self._refuse("cross-origin request refused")
        if req.method in (b"GET", b"HEAD") and urlsplit(req.target).path in PUBLIC:
            return None
        given = req.header(TOKEN_HEADER)
        if given is None or not hmac.compare_digest(given, self.token.encode()):
            return self._refuse("missing or wrong X-Vmlan-Token header: open the URL that "
                                "'vmlan dashboard' printed (it ends in #token=...)")
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except TimeoutError:
            return
        except asyncio.LimitOverrunError:
            writer.write(_answer("431 Request Header Fields Too Large", "request head too large"))
            return
        req = parse_head(head[:-4])
        if req is None:
            writer.write(_answer("400 Bad Request", "not an HTTP/1.x request"))
            return
        refusal = self.check(req)
        if refusal is not None:
            writer.write(refusal)
            await writer.drain()
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.upstream))
        except OSError as exc:
            writer.write(_answer("502 Bad Gateway", f"the vmlan daemon at {self.upstream}: {exc.strerror or exc}"))
            return
        up_writer.write(upstream_head(req))
        # the request's body (if any) follows in reader; the daemon's answer ends when it closes
        to_daemon = asyncio.ensure_future(_pipe(reader, up_writer))
        to_browser = asyncio.ensure_future(_pipe(up_reader, writer))
        try:
            await asyncio.wait([to_daemon, to_browser], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_daemon, to_browser):
                task.cancel()
            await asyncio.gather(to_daemon, to_browser, return_exceptions=True)
            up_writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while True:
        chunk = await src.read(65536)
        if not chunk:
            return
        dst.write(chunk)
        await dst.drain()


async def serve(proxy: Proxy, host: str, port: int, out: Callable[[str], object],
                started: asyncio.Event | None = None) -> int:
    """Listen, print the URL, proxy until SIGINT/SIGTERM (then 0). Raises ProxyError."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await asyncio.start_server(proxy.handle, host, port, limit=MAX_HEAD)
    except OSError as exc:
        raise ProxyError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = server.sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    out(f"vmlan dashboard: http://{shown}:{bound}/#token={proxy.token}\n"
        "(anyone who has this URL controls your networks: any user of this host can reach the port, "
        "the token keeps them out; Ctrl-C stops)\n")
    sys.stdout.flush()
    if started is not None:
        started.set()
    async with server:
        await stop.wait()
    return 0


def run(listen: str, upstream: Path, out: Callable[[str], object]) -> int:
    """``vmlan dashboard``: raises ListenError for a bad ``--listen``, ProxyError if it cannot listen."""
    host, port = parse_listen(listen)
    return asyncio.run(serve(Proxy(upstream), host, port, out))
