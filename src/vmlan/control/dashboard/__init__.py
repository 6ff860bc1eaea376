"""The web dashboard: one static page (index.html, app.js, style.css beside this module), served by the
daemon's own app at ``/`` and ``/dashboard`` and kept out of the API's OpenAPI document.

The page is plain HTML and vanilla JavaScript calling the API with fetch (the event stream too, as
EventSource cannot send the proxy's token header); no build step, nothing fetched from elsewhere. The
Content-Security-Policy allows only the page's own origin and no inline script, and app.js inserts
every value with textContent (a guest picks its DHCP hostname).
``vmlan dashboard`` (proxy.py) carries it from a loopback TCP port to the daemon's unix socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}
TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "style.css": "text/css; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str


def _load() -> dict[str, Asset]:
    here = resources.files(__name__)
    return {name: Asset((here / name).read_bytes(), media_type) for name, media_type in TYPES.items()}


ASSETS = _load()
