"""What the HTTP views read: the app's state (its keys) and a request's JSON body.

Below `http.py` (the app and its middlewares) and `routes/` (the views), which both use it; the
guard in `http.py` has checked a request's headers and URL before any view reads its body here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from plasmad.api.contract import Route
from plasmad.api.service import Service
from plasmad.core.errors import ErrorCode, PlasmaError, invalid
from plasmad.core.wire import MAX_BODY_BYTES, check_text

log = logging.getLogger("plasmad.api.http")  # the HTTP API's logger, whichever of its modules logs

SERVICE = web.AppKey("service", Service)
ROUTES = web.AppKey("routes", Sequence[Route])
OPENAPI = web.AppKey("openapi", dict[str, Any])


def service(request: web.Request) -> Service:
    return request.app[SERVICE]


def too_large(size: int | None) -> PlasmaError:
    said = f"{size} bytes" if size else "over the limit"
    return PlasmaError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"the request body is {said}; plasmad takes at most {MAX_BODY_BYTES} bytes",
        details={"limit": MAX_BODY_BYTES},
    )


async def json_body(request: web.Request) -> Any:
    if not request.body_exists:
        return {}
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer past Python's digit
        # limit; RecursionError a body nested deeper than the decoder goes. All are bad input.
        raise invalid("body", "is not valid JSON") from None
    except web.HTTPRequestEntityTooLarge:  # a chunked body, no Content-Length to refuse it by
        raise too_large(None) from None
    except ConnectionResetError:
        # The client hung up mid-body: nobody to answer, nothing wrong here; no traceback.
        log.debug("%s %s: the client went away before its body arrived", request.method, request.path)
        raise invalid("body", "was cut short: the client went away") from None
    check_text(body)
    return body
