"""The web dashboard: the page and its files as the daemon serves them (types, CSP, nothing external),
every API call in app.js checked against the app's OpenAPI document, no HTML-injection sink in the
script, and ``vmlan dashboard`` end to end against a real daemon (the page public, the API only with the
X-Vmlan-Token header, no cookie, preflights refused, JSON and server-sent events through the proxy,
loopback-only --listen)."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vmlan.control import dashboard
from vmlan.control.api import create_app
from vmlan.control.daemon import Daemon
from vmlan.control.dashboard.proxy import ListenError, Proxy, _loopback_host, parse_head, parse_listen, upstream_head
from vmlan.control.openapi import generate

from .conftest import DaemonProcess

HERE = Path(dashboard.__file__).parent
APP_JS = (HERE / "app.js").read_text()
CODE = re.sub(r"^\s*//[^\n]*|\s//[^\n]*", "", APP_JS, flags=re.M)  # app.js without its comments
INDEX = (HERE / "index.html").read_text()
STRING = r'(`[^`]*`|"[^"]*"|\'[^\']*\')'


# -- the page as the daemon's app serves it -----------------------------------------------------------

def _get_all(paths: list[str]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        daemon = Daemon(Path("/nonexistent/state"), Path("/nonexistent/run"), asyncio.get_running_loop(), backends={})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(daemon)),
                                     base_url="http://vmlan") as c:
            return [await c.get(p) for p in paths]

    return asyncio.run(go())


def test_page_and_files_served_with_types_and_csp() -> None:
    root, page, js, css, missing, escape = _get_all(["/", "/dashboard", "/dashboard/app.js", "/dashboard/style.css",
                                                     "/dashboard/nope.js", "/dashboard/..%2Fapi.py"])
    for r, ctype in ((root, "text/html"), (page, "text/html"), (js, "text/javascript"), (css, "text/css")):
        assert r.status_code == 200 and r.headers["content-type"] == f"{ctype}; charset=utf-8"
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    assert root.text == page.text == INDEX and js.text == APP_JS
    assert missing.status_code == 404 and missing.json() == {"detail": "no dashboard file 'nope.js'"}
    assert escape.status_code == 404


def test_page_is_self_contained() -> None:
    assert re.findall(r"<script\b[^>]*>", INDEX) == ['<script src="/dashboard/app.js" defer>']
    assert re.findall(r"<script\b[^>]*>(.*?)</script>", INDEX, re.S) == [""], "no inline script"
    assert re.search(r"\son[a-z]+\s*=", INDEX) is None, "inline event handlers are refused by the CSP"
    assert "style=" not in INDEX and "<style" not in INDEX
    for text in (INDEX, APP_JS, (HERE / "style.css").read_text()):
        assert re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text.replace("http://", "").lower()) is None
        assert "@import" not in text and "url(" not in text


def test_dashboard_is_not_in_the_api_document() -> None:
    paths = set(generate()["paths"])
    assert "/" not in paths and not any(p.startswith("/dashboard") for p in paths)


# -- app.js against the OpenAPI document ----------------------------------------------------------------

def _documented(schema: dict[str, object], method: str, template: str) -> bool:
    """Whether a JS path template (``${...}`` for a value, query string ignored) names an operation."""
    path = re.sub(r"\$\{[^}]*\}", "X", template.split("?", 1)[0])
    paths = schema["paths"]
    assert isinstance(paths, dict)
    for doc_path, ops in paths.items():
        pattern = "^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(doc_path)) + "$"
        if re.match(pattern, path) and method.lower() in ops:
            return True
    return False


def js_calls(code: str = CODE) -> list[tuple[str, str]]:
    """Every (method, path template) app.js asks for: api("METHOD", PATH ...) and fetch(PATH, {...}) (GET
    unless its init names a method)."""
    calls = [(m, s[1:-1]) for m, s in re.findall(r'\bapi\(\s*"([A-Z]+)",\s*' + STRING, code)]
    for path, init in re.findall(r"\bfetch\(\s*" + STRING + r"\s*(?:,\s*\{([^{}]*)\})?\s*\)", code):
        method = re.search(r'\bmethod:\s*"([A-Z]+)"', init)
        calls.append((method.group(1) if method else "GET", path[1:-1]))
    return calls


def test_every_api_call_in_the_script_is_documented() -> None:
    schema = generate()
    calls = js_calls()
    # every call site is one the parser understood: a literal method and path, nothing built elsewhere
    # (api()'s own fetch(path, init) is the one fetch with a variable path)
    fetches = len(re.findall(r"\bfetch\(", CODE))
    assert CODE.count("fetch(path, init)") == 1
    assert len(calls) == len(re.findall(r"\bapi\(", CODE)) - 1 + fetches - 1
    assert ("GET", "/events") in calls
    assert "XMLHttpRequest" not in CODE and "WebSocket" not in CODE and "EventSource" not in CODE
    # and each fetch sends the token header (EventSource could not: that is why /events is a fetch)
    assert len(re.findall(r"\bheaders: authHeaders\(", CODE)) == fetches
    assert re.search(r'"X-Vmlan-Token": TOKEN', CODE)
    wrong = [(m, p) for m, p in calls if not _documented(schema, m, p)]
    assert not wrong, f"app.js calls paths the API does not have: {wrong}"
    used = {(m, re.sub(r"\$\{[^}]*\}", "X", p.split("?")[0])) for m, p in calls}
    assert {("GET", "/networks"), ("POST", "/networks/X/start"), ("POST", "/networks/X/destroy"),
            ("PUT", "/networks/X/autostart"), ("GET", "/networks/X/leases"), ("GET", "/networks/X/forwards"),
            ("POST", "/networks/X/forwards"), ("DELETE", "/networks/X/forwards/X/X"), ("GET", "/networks/X/dns"),
            ("POST", "/networks/X/dns"), ("DELETE", "/networks/X/dns/X"), ("GET", "/networks/X/mac-table"),
            ("GET", "/networks/X/status"), ("GET", "/networks/X/usernet"), ("GET", "/events")} <= used
    # and the check itself tells a wrong path or method
    assert not _documented(schema, "GET", "/networks/${n}/lease")
    assert not _documented(schema, "POST", "/networks/${n}/leases")
    assert not _documented(schema, "GET", "/networks/${n}/forwards/${p}")


def test_js_calls_parser_sees_fetch_methods() -> None:
    """The counting above relies on js_calls reading a fetch's method; a POST fetch must not pass as GET."""
    code = 'api("GET", "/version"); fetch("/events", {headers: h}); fetch(`/networks/${n}/start`, {method: "POST"});'
    assert js_calls(code) == [("GET", "/version"), ("GET", "/events"), ("POST", "/networks/${n}/start")]


def test_script_keeps_the_token_per_origin() -> None:
    """The token comes from the fragment, lives in sessionStorage (per origin, port included) and leaves
    the address bar; never a cookie or localStorage, never the query string."""
    assert "location.hash" in CODE and "sessionStorage.setItem(TOKEN_KEY" in CODE
    assert "history.replaceState(" in CODE
    for unwanted in ("document.cookie", "localStorage", "location.search.get", "?token", 'credentials: "include"'):
        assert unwanted not in CODE, unwanted
    assert CODE.count('credentials: "omit"') == 2
    # opened without the token: one line saying where it is, and the API left alone
    line = re.search(r'<p id="no-token"[^>]*hidden>(.*?)</p>', INDEX, re.S)
    assert line and "vmlan dashboard" in line.group(1) and "#token=" in line.group(1)
    assert re.search(r'if \(TOKEN === null\) \{[^}]*\$\("no-token"\)\.hidden = false;[^}]*return;', CODE)


def test_script_never_inserts_markup() -> None:
    """A guest picks its DHCP hostname: app.js must put text in the DOM as text, never as HTML."""
    code = APP_JS
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "createContextualFragment",
                 "DOMParser", "eval(", "new Function", "setTimeout(\"", "srcdoc", "javascript:"):
        assert sink not in code, sink
    assert re.search(r"setAttribute\(\s*[\"']on", code) is None
    assert "textContent" in code and "createTextNode" in code


# -- the proxy ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:8470", ("127.0.0.1", 8470)), ("127.9.8.7:0", ("127.9.8.7", 0)), ("[::1]:80", ("::1", 80)),
    ("localhost:1", ("127.0.0.1", 1)),
])
def test_parse_listen(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["0.0.0.0:8470", "192.0.2.1:80", "[::]:80", "example.com:80", "8470",
                                  "127.0.0.1", "127.0.0.1:65536", "127.0.0.1:x"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ListenError, match="--listen"):
        parse_listen(text)


def test_host_header_and_head_parsing() -> None:
    assert all(_loopback_host(h) for h in (b"127.0.0.1:8470", b"localhost", b"LOCALHOST:1", b"[::1]:8470"))
    assert not any(_loopback_host(h) for h in (b"evil.example:8470", b"192.0.2.1", b"[::2]:1", b"", b"[::1"))
    req = parse_head(b"GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: a=b")
    assert req is not None and req.target == "/x?y=1" and req.header(b"host") == b"127.0.0.1"
    assert parse_head(b"GET http://evil/ HTTP/1.1") is None and parse_head(b"junk") is None
    assert parse_head(b"GET / HTTP/1.1\r\nno colon") is None
    proxy = Proxy(Path("/nonexistent"), token="t0k")

    def check(head: bytes) -> bytes:
        req = parse_head(head)
        assert req is not None
        return proxy.check(req) or b""

    assert check(b"POST /x HTTP/1.1\r\nHost: localhost:1\r\nX-Vmlan-Token: t0k\r\nOrigin: http://localhost:1") == b""
    assert check(b"GET /x HTTP/1.1\r\nHost: localhost\r\nx-vmlan-token: t0k") == b""
    assert check(b"GET /dashboard/app.js?v=1 HTTP/1.1\r\nHost: 127.0.0.1") == b""
    for head in (b"POST /x HTTP/1.1\r\nHost: localhost:1\r\nX-Vmlan-Token: t0k\r\nOrigin: http://a.example",
                 b"POST /x HTTP/1.1\r\nHost: localhost:1\r\nX-Vmlan-Token: t0k\r\nOrigin: http://localhost:2",
                 b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Vmlan-Token: t0K",
                 b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Vmlan-Token: t0kk",
                 b"GET /x HTTP/1.1\r\nHost: localhost\r\nCookie: vmlan_dashboard=t0k",
                 b"GET /x?token=t0k HTTP/1.1\r\nHost: localhost",
                 b"POST / HTTP/1.1\r\nHost: localhost",
                 b"OPTIONS /x HTTP/1.1\r\nHost: localhost\r\nX-Vmlan-Token: t0k",
                 b"GET / HTTP/1.1\r\nHost: a.example"):
        answer = check(head)
        assert answer.startswith(b"HTTP/1.1 403") and b"Content-Type: application/json" in answer, head
        assert b"access-control" not in answer.lower()
    # what reaches the daemon: no token, no cookie, one Connection: close
    req = parse_head(b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Vmlan-Token: t0k\r\nCookie: a=b\r\n"
                     b"Connection: keep-alive\r\nAccept: */*")
    assert req is not None
    assert upstream_head(req) == b"GET /x HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nConnection: close\r\n\r\n"


class DashboardProcess:
    def __init__(self, d: DaemonProcess, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "vmlan", "dashboard", *args], env=d.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while "http://" not in line:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready or self.proc.poll() is not None:
                raise AssertionError(f"vmlan dashboard gave no URL: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]
            line = self.proc.stdout.readline()
        self.line = line
        match = re.search(r"(http://127\.0\.0\.1:(\d+))/#token=([A-Za-z0-9_-]+)$", line.strip())
        assert match and "?token" not in line, line
        self.base, self.port, self.token = match.group(1), match.group(2), match.group(3)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


@pytest.fixture
def proxied(daemon_proc: DaemonProcess) -> Iterator[tuple[DaemonProcess, DashboardProcess]]:
    p = DashboardProcess(daemon_proc, "--listen", "127.0.0.1:0")
    try:
        yield daemon_proc, p
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def _no_cors(r: httpx.Response) -> bool:
    return not any(k.lower().startswith("access-control-") for k in r.headers)


def test_proxy_end_to_end(proxied: tuple[DaemonProcess, DashboardProcess], tmp_path: Path) -> None:
    d, p = proxied
    auth = {"X-Vmlan-Token": p.token}
    with httpx.Client(base_url=p.base, timeout=30, follow_redirects=False) as anon:
        # the page and its files: public, static, no cookie set
        for path, body in (("/", INDEX), ("/dashboard", INDEX), ("/dashboard/app.js", APP_JS),
                           ("/dashboard/style.css", (HERE / "style.css").read_text())):
            r = anon.get(path)
            assert r.status_code == 200 and r.text == body, path
            assert "set-cookie" not in r.headers and _no_cors(r)
        r = anon.get("/")
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'self'" in r.headers["content-security-policy"]
        # the API: the header or nothing; the URL's token in a query or a cookie is not the header
        cookies = {"vmlan_dashboard": p.token, f"vmlan_dashboard_{p.port}": p.token}
        for path, headers in (("/networks", {}), ("/events", {}), ("/version", {}), ("/openapi.json", {}),
                              ("/dashboard/nope.js", {}), (f"/networks?token={p.token}", {}),
                              ("/networks", {"X-Vmlan-Token": "wrong"}), ("/networks", {"X-Vmlan-Token": ""}),
                              ("/networks", {"X-Vmlan-Token": p.token + "x"}),
                              ("/networks", {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())})):
            r = anon.get(path, headers=headers)
            assert r.status_code == 403, (path, headers)
            assert r.headers["content-type"] == "application/json" and "X-Vmlan-Token" in r.json()["detail"]
            assert _no_cors(r)
        assert anon.post("/networks/default/destroy").status_code == 403
        # a cross-site page's preflight for the header: refused, and nothing tells the browser it may
        for headers in ({"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                         "Access-Control-Request-Headers": "x-vmlan-token"},
                        {"Origin": "http://127.0.0.1:1", "Access-Control-Request-Method": "GET",
                         "Access-Control-Request-Headers": "x-vmlan-token"}, auth):
            for path in ("/networks/default/destroy", "/"):
                r = anon.options(path, headers=headers)
                assert r.status_code == 403 and _no_cors(r), (path, headers)
    with httpx.Client(base_url=p.base, timeout=30, follow_redirects=False, headers=auth) as c:
        r = c.get("/networks")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json" and _no_cors(r)
        assert [(n["name"], n["active"], n["addresses"]) for n in r.json()] == [("default", True, ["192.168.122.1/24"])]
        r = c.get("/networks/nope")
        assert r.status_code == 404
        assert r.json() == {"detail": "Network not found: no network with matching name 'nope'"}
        r = c.post("/networks/default/dns", json={"name": "web.lan", "ip": "192.168.122.50"},
                   headers={"Origin": p.base})
        assert r.status_code == 201 and r.json()["records"]["web.lan"] == ["192.168.122.50"]
        # a DNS-rebinding page, another site, another loopback port: refused even with the header
        assert c.get("/networks", headers={"Host": "evil.example:80"}).status_code == 403
        assert c.post("/networks/default/destroy", headers={"Origin": "http://evil.example"}).status_code == 403
        assert c.post("/networks/default/destroy", headers={"Origin": "http://127.0.0.1:1"}).status_code == 403
        # server-sent events through the proxy, with the header: subscribe, then stop the network
        with c.stream("GET", "/events?limit=1") as events:
            assert events.status_code == 200 and events.headers["content-type"].startswith("text/event-stream")
            lines = events.iter_lines()
            assert next(lines) == ": vmlan events"
            assert c.post("/networks/default/destroy").json()["active"] is False
            got = [line for line in lines if line]
        assert got[0] == "event: network-stopped" and '"network": "default"' in got[1]
    assert d.vmlan("net-list", "--all", "--name").stdout == "default\n\n"
    assert p.stop() == 0


def test_proxy_refuses_non_loopback_listen(tmp_path: Path) -> None:
    env = {**os.environ, "VMLAN_SOCKET": str(tmp_path / "none.sock")}
    for listen in ("0.0.0.0:8470", "[::]:8470", "192.0.2.1:8470"):
        r = subprocess.run([sys.executable, "-m", "vmlan", "dashboard", "--listen", listen], env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stdout == "", (listen, r)
        assert r.stderr.count("\n") == 1 and "not a loopback address" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "vmlan", "dashboard", "--listen", "127.0.0.1:0"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: failed to connect to the vmlan daemon"), r.stderr


def test_proxy_port_in_use_is_one_line(daemon_proc: DaemonProcess) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = daemon_proc.vmlan("dashboard", "--listen", f"127.0.0.1:{port}", check=False)
    assert r.returncode == 1 and r.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: "), r.stderr
    assert r.stderr.count("\n") == 1
