"""The review board: a web page served by plasmad itself at `/`, for the artist to look and decide.

Static files in this package (`static/`: index.html, ES modules, CSS), no build step, nothing from
the network: the page works offline. It talks to the same HTTP API as everything else (its writes
are JSON POSTs through the same validation) and follows `GET /events`. Its responses carry a
Content-Security-Policy that allows this origin only: no inline script, no other site's script,
style, image or connection, no framing.

Only the files shipped here are served, by name (no paths); the API's guard (loopback Host, no
foreign Origin) applies to them as to every route.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from aiohttp import web

from plasmad.core.errors import not_found

STATIC = Path(str(resources.files(__name__) / "static"))
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # ES modules are refused under any other type
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_ASSET_RE = re.compile(r"^[a-z0-9][a-z0-9-]*\.(?:js|css|svg)$")
#: The files shipped, listed once at import: a request never reaches the disk for an unknown name.
ASSETS = frozenset(p.name for p in STATIC.iterdir() if _ASSET_RE.match(p.name))
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated each time (ETag): an upgraded plasmad's board is never mixed with a cached one.
    "Cache-Control": "no-cache",
}


def _serve(path: Path) -> web.FileResponse:
    headers = {**SECURITY_HEADERS, "Content-Type": CONTENT_TYPES[path.suffix]}
    return web.FileResponse(path, headers=headers)


async def index(request: web.Request) -> web.StreamResponse:
    return _serve(STATIC / "index.html")


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise not_found(f"board file {name}")
    return _serve(STATIC / name)


def routes() -> list[web.RouteDef]:
    return [web.get("/", index), web.get("/board/{name}", asset)]
