"""A small client of the daemon's API over its unix socket (stdlib http.client: the CLI starts fast)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode


class ClientError(Exception):
    """The daemon answered with an error, or could not be reached; ``message`` is one line."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.unix_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def seg(value: str) -> str:
    """One path segment, any character allowed."""
    return quote(value, safe="")


class Client:
    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout

    def _open(self) -> _UnixConnection:
        conn = _UnixConnection(self.path, self.timeout)
        try:
            conn.connect()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ClientError(f"failed to connect to the vmlan daemon at {self.path}: {reason} "
                              "(is 'vmlan daemon' running?)") from None
        return conn

    def request(self, method: str, url: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        conn = self._open()
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise ClientError(f"the vmlan daemon at {self.path} did not answer: {exc}") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if resp.status >= 400:
            detail = payload.get("detail") if isinstance(payload, dict) else None
            message = detail if isinstance(detail, str) else f"HTTP {resp.status}"
            raise ClientError(message, resp.status)
        return payload

    def events(self, limit: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Server-sent events as (kind, data) until the stream ends."""
        conn = self._open()
        if conn.sock is not None:
            conn.sock.settimeout(None)
        try:
            url = "/events" + (f"?limit={limit}" if limit else "")
            conn.request("GET", url)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise ClientError(f"HTTP {resp.status}", resp.status)
            kind, data = "", ""
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
                elif not line and kind:
                    yield kind, json.loads(data) if data else {}
                    kind, data = "", ""
        finally:
            conn.close()
