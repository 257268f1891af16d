"""`GET /openapi.json`: this API's OpenAPI document, written from the app's routes."""

from __future__ import annotations

from aiohttp import web

from plasmad.api import openapi
from plasmad.api.contract import Route
from plasmad.api.methods import methods as rpc_methods
from plasmad.api.request import OPENAPI, ROUTES
from plasmad.core.wire import OpenApiDocument


async def openapi_document(request: web.Request) -> web.Response:
    """`GET /openapi.json`: written once per app from its routes (they do not change once it runs)."""
    cache = request.app[OPENAPI]
    if "doc" not in cache:
        cache["doc"] = openapi.build(request.app[ROUTES], rpc_methods())
    return web.json_response(cache["doc"])


def routes() -> list[Route]:
    return [
        Route("GET", "/openapi.json", openapi_document, OpenApiDocument, "This document", tag="operations"),
    ]
