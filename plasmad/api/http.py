"""The HTTP JSON API on 127.0.0.1:3000, for the artist's TypeScript pipeline (GEN-01).

Thin: the views (`plasmad.api.routes`, one module per area) parse the request and call `Service`.
Two middlewares: `guard` refuses what a web page in the artist's browser could send (this API takes
file paths: a foreign Host is DNS rebinding, a foreign Origin is another site, a non-JSON body is a
form post), and `errors` turns every PlasmaError into its HTTP status and `{"error": {...}}` body.
A view reads its body with `plasmad.api.request.json_body`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlparse

from aiohttp import web

from plasmad.api.contract import Handler, Route
from plasmad.api.request import OPENAPI, ROUTES, SERVICE, too_large
from plasmad.api.routes import (
    board,
    dataset,
    events,
    health,
    jobs,
    models,
    operations,
    reproduce,
    spec,
    training,
)
from plasmad.api.service import Service
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.wire import MAX_BODY_BYTES, check_text

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})

#: Each area's routes, in the order the spec lists its paths and tags.
AREAS: tuple[Callable[[], list[Route]], ...] = (
    health.routes,
    jobs.routes,
    dataset.routes,
    training.routes,
    operations.routes,
    events.routes,
    spec.routes,
    reproduce.routes,
    models.routes,
    board.routes,
)


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:3000
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _error_response(err: PlasmaError) -> web.Response:
    return web.json_response({"error": err.to_dict()}, status=err.code.http_status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PlasmaError as err:
        return _error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = ErrorCode.NOT_FOUND if exc.status in (404, 405) else ErrorCode.INVALID_INPUT
        if exc.status == 413:
            code = ErrorCode.PAYLOAD_TOO_LARGE
        msg = f"{request.method} {request.path}: {exc.reason}"
        # A 405 keeps its Allow header: it tells a client which methods the path has.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        body = {"error": PlasmaError(code, msg).to_dict()}
        return web.json_response(body, status=exc.status, headers=allow)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error_response(PlasmaError(ErrorCode.INTERNAL, "internal error; see plasmad's log"))


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    host = _host_name(request.headers.get("Host", ""))
    if host not in LOOPBACK_NAMES:
        raise PlasmaError(ErrorCode.FORBIDDEN, f"Host {host!r} is not a loopback name")
    origin = request.headers.get("Origin")
    if origin is not None and (urlparse(origin).hostname or "").lower() not in LOOPBACK_NAMES:
        raise PlasmaError(ErrorCode.FORBIDDEN, f"requests from {origin} are not accepted")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        # The types a web page may post cross-site without a CORS preflight are refused even when
        # empty; any other empty body is no body (aiohttp's client labels it octet-stream).
        ctype = request.content_type
        if ctype in FORM_TYPES or (request.body_exists and ctype != "application/json"):
            raise PlasmaError(
                ErrorCode.UNSUPPORTED_MEDIA,
                f"the body must be application/json, not {request.content_type or 'untyped'}",
            )
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise too_large(request.content_length)
    # Odd text in the URL is refused here, for every route (issue 10); the body's in json_body.
    for name, value in request.match_info.items():
        check_text(value, name)
    for name, value in request.query.items():
        check_text(name, name)
        check_text(value, name)
    return await handler(request)


def routes() -> list[Route]:
    """Every route, each declared once with its models: served here, described by GET /openapi.json."""
    return [route for area_routes in AREAS for route in area_routes()]


def create_app(service: Service | None = None, extra_routes: list[Route] | None = None) -> web.Application:
    """The HTTP app. Without `service`, whoever starts the app sets `app[SERVICE]` before it serves
    (the daemon does, in one of its cleanup contexts)."""
    app = web.Application(middlewares=[errors, guard], client_max_size=MAX_BODY_BYTES)
    if service is not None:
        app[SERVICE] = service
    table = routes() + (extra_routes or [])
    app[ROUTES] = table
    app[OPENAPI] = {}  # filled at the first GET /openapi.json (the app's state is frozen by then)
    app.add_routes([r.route_def() for r in table])
    return app
