"""Reproductions and consistency checks (issue 12): render a page's stored workflow again, or one
prompt N times with one seed, and compare."""

from __future__ import annotations

from aiohttp import web

from plasmad.api.contract import SUBMITS, Route
from plasmad.api.request import json_body, service
from plasmad.core.errors import invalid
from plasmad.core.wire import ConsistencyRequest, ReproduceBody, ReproductionView


async def reproduce_image(request: web.Request) -> web.Response:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    answer = await service(request).reproduce({**body, "image": request.match_info["name"]})
    return web.json_response(answer, status=202)


async def start_consistency(request: web.Request) -> web.Response:
    return web.json_response(await service(request).consistency(await json_body(request)), status=202)


async def get_reproduction(request: web.Request) -> web.Response:
    return web.json_response(await service(request).reproduction(request.match_info["id"]))


async def get_consistency(request: web.Request) -> web.Response:
    return await get_reproduction(request)  # one store of records; a name per route in the spec


def routes() -> list[Route]:
    R = Route
    return [
        R("POST", "/images/{name}/reproduce", reproduce_image, ReproductionView,
          "Render a page's stored workflow again and compare", status=202, body=ReproduceBody,
          errors=SUBMITS, rpc="reproduce", tag="reproduce"),
        R("POST", "/consistency", start_consistency, ReproductionView,
          "N same-seed generations of a prompt, compared", status=202, body=ConsistencyRequest,
          errors=SUBMITS, rpc="consistency", tag="reproduce"),
        R("GET", "/reproductions/{id}", get_reproduction, ReproductionView,
          "A reproduction or consistency check: its runs and scores", errors=(400,), rpc="reproduction",
          tag="reproduce"),
        R("GET", "/consistency/{id}", get_consistency, ReproductionView,
          "A consistency check: its runs and scores", errors=(400,), tag="reproduce"),
    ]  # fmt: skip
