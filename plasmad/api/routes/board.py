"""The review board (issue 14): pages and versions, their images, new versions, the loss log, and
the board's own files (`plasmad.api.board`).

Images are files sent as they are (aiohttp's FileResponse: off the event loop, with ETag and
conditional requests).
"""

from __future__ import annotations

from aiohttp import web

from plasmad.api.board import asset, index
from plasmad.api.contract import SUBMITS, Route
from plasmad.api.request import json_body, service
from plasmad.core.wire import (
    JobView,
    LossParams,
    LossView,
    PagesParams,
    PagesView,
    RerollRequest,
    ThumbnailParams,
    VaryRequest,
    Workflow,
)

NAMED = (400, 503)  # a name that is not chXX_pNNN_vN; no pipeline folder configured
PNG, JPEG, HTML, JS = "image/png", "image/jpeg", "text/html", "text/javascript"  # answers that are files
IMAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


async def list_pages(request: web.Request) -> web.Response:
    return web.json_response(await service(request).pages.list(dict(request.query)))


async def page_image(request: web.Request) -> web.StreamResponse:
    path = await service(request).pages.image(request.match_info["name"])
    return web.FileResponse(path, headers=IMAGE_HEADERS)


async def page_thumbnail(request: web.Request) -> web.StreamResponse:
    path = await service(request).pages.thumbnail(request.match_info["name"], dict(request.query))
    return web.FileResponse(path, headers=IMAGE_HEADERS)


async def page_workflow(request: web.Request) -> web.Response:
    return web.json_response(await service(request).pages.workflow(request.match_info["name"]))


async def reroll_page(request: web.Request) -> web.Response:
    body = await json_body(request)
    return web.json_response(await service(request).reroll(request.match_info["name"], body), status=202)


async def vary_page(request: web.Request) -> web.Response:
    body = await json_body(request)
    return web.json_response(await service(request).vary(request.match_info["name"], body), status=202)


async def job_image(request: web.Request) -> web.StreamResponse:
    path = await service(request).pages.job_image(request.match_info["id"])
    return web.FileResponse(path, headers=IMAGE_HEADERS)


async def job_thumbnail(request: web.Request) -> web.StreamResponse:
    path = await service(request).pages.job_thumbnail(request.match_info["id"], dict(request.query))
    return web.FileResponse(path, headers=IMAGE_HEADERS)


async def training_loss(request: web.Request) -> web.Response:
    result = await service(request).training.loss(request.match_info["id"], dict(request.query))
    return web.json_response(result)


def routes() -> list[Route]:
    R = Route
    return [
        R("GET", "/pages", list_pages, PagesView, "Chapters, pages and versions from the generation logs",
          query=PagesParams, errors=(503,), rpc="pages", tag="board"),
        R("GET", "/images/{name}", page_image, None, "A version's image", media_type=PNG,
          errors=NAMED, tag="board"),
        R("GET", "/images/{name}/thumbnail", page_thumbnail, None, "A version's thumbnail (cached)",
          query=ThumbnailParams, media_type=JPEG, errors=NAMED, tag="board"),
        R("GET", "/images/{name}/workflow", page_workflow, Workflow, "A version's workflow JSON",
          errors=NAMED, tag="board"),
        R("POST", "/images/{name}/reroll", reroll_page, JobView, "Again with a new seed", status=202,
          body=RerollRequest, errors=SUBMITS, rpc="reroll", tag="board"),
        R("POST", "/images/{name}/vary", vary_page, JobView, "Again with the same seed, another strength",
          status=202, body=VaryRequest, errors=SUBMITS, rpc="vary", tag="board"),
        R("GET", "/jobs/{id}/image", job_image, None, "A job's image", media_type=PNG, tag="board"),
        R("GET", "/jobs/{id}/thumbnail", job_thumbnail, None, "A job's thumbnail (cached)",
          query=ThumbnailParams, media_type=JPEG, tag="board"),
        R("GET", "/loras/{id}/loss", training_loss, LossView, "A training's loss at each step",
          query=LossParams, rpc="training_loss", tag="training"),
        R("GET", "/", index, None, "The review board", media_type=HTML, tag="board"),
        R("GET", "/board/{name}", asset, None, "The board's scripts and styles", media_type=JS,
          tag="board"),
    ]  # fmt: skip
