"""``vmlan dashboard``: the daemon's API and page from a loopback TCP port, for a browser.

The API listens on a unix socket only its owner can use; a browser speaks TCP. This proxy listens on a
loopback address and passes each authorised request to the daemon's socket for the invoking user. Any
user of the host can connect to a loopback port, so a random token is made at start and printed in the
URL; the first visit with ``?token=`` gets it back as a cookie (HttpOnly, SameSite=Strict) and is
redirected to the same URL without it, and every request without the token is refused (403). Only
loopback addresses are accepted for ``--listen``; a Host header naming anything but a loopback address
or ``localhost`` is refused too (DNS rebinding), as is a cross-origin request that changes something.

One request per connection: the request goes upstream with ``Connection: close`` and the answer is
streamed back until the daemon closes (server-sent events included), so nothing here parses bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

DEFAULT_LISTEN = "127.0.0.1:8470"
COOKIE = "vmlan_dashboard"
MAX_HEAD = 65536
HEAD_TIMEOUT = 30.0
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"cookie"})
_SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})


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


def _answer(status: str, body: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    data = body.encode()
    head = [f"HTTP/1.1 {status}", "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(data)}",
            "Connection: close", "Cache-Control: no-store", *(f"{k}: {v}" for k, v in extra or ())]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data


class Proxy:
    """Loopback TCP to the daemon's unix socket, for holders of ``token``."""

    def __init__(self, upstream: Path, token: str | None = None) -> None:
        self.upstream = upstream
        self.token = token or secrets.token_urlsafe(24)
        self.cookie = COOKIE  # with the port once bound: a browser keeps one cookie jar for every port of a host
        self.refused = 0

    def _cookie_token(self, req: Request) -> str | None:
        raw = req.header(b"cookie")
        if raw is None:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw.decode("latin-1"))
        except CookieError:
            return None
        morsel = jar.get(self.cookie)
        return morsel.value if morsel is not None else None

    def _valid(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    def check(self, req: Request) -> bytes | None:
        """The refusal or redirect to send instead of proxying, None to proxy ``req``."""
        host = req.header(b"host")
        if host is None or not _loopback_host(host):
            self.refused += 1
            return _answer("403 Forbidden", "vmlan dashboard: the Host header must name a loopback address\n")
        url = urlsplit(req.target)
        query = parse_qsl(url.query, keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given and self._valid(given[-1]):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = url.path + (f"?{rest}" if rest else "")
            return _answer("303 See Other", "", [
                ("Location", location),
                ("Set-Cookie", f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"),
                ("Referrer-Policy", "no-referrer")])
        if not self._valid(self._cookie_token(req)):
            self.refused += 1
            return _answer("403 Forbidden", "vmlan dashboard: open the URL with ?token= that "
                                            "'vmlan dashboard' printed\n")
        origin = req.header(b"origin")
        if req.method not in _SAFE_METHODS and origin is not None and not _loopback_host(
                origin.split(b"//", 1)[-1]):
            self.refused += 1
            return _answer("403 Forbidden", "vmlan dashboard: cross-origin request refused\n")
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
            writer.write(_answer("431 Request Header Fields Too Large", "request head too large\n"))
            return
        req = parse_head(head[:-4])
        if req is None:
            writer.write(_answer("400 Bad Request", "not an HTTP/1.x request\n"))
            return
        refusal = self.check(req)
        if refusal is not None:
            writer.write(refusal)
            await writer.drain()
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.upstream))
        except OSError as exc:
            writer.write(_answer("502 Bad Gateway", f"the vmlan daemon at {self.upstream}: {exc.strerror or exc}\n"))
            return
        lines = [b" ".join((req.method, req.target.encode("latin-1"), req.version))]
        lines += [k + b": " + v for k, v in req.headers if k.lower() not in _HOP]
        up_writer.write(b"\r\n".join([*lines, b"Connection: close", b"", b""]))
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
    proxy.cookie = f"{COOKIE}_{bound}"
    shown = f"[{host}]" if ":" in host else host
    out(f"vmlan dashboard: http://{shown}:{bound}/?token={proxy.token}\n"
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
