"""`POST /datasets/reg`: queue a dataset's regularisation images (DATA-03)."""

from __future__ import annotations

from aiohttp import web

from plasmad.api.contract import SUBMITS, Route
from plasmad.api.request import json_body, service
from plasmad.core.wire import DatasetRegRequest, RegView


async def dataset_reg(request: web.Request) -> web.Response:
    result = await service(request).datasets.reg(await json_body(request))
    return web.json_response(result, status=202 if result["queued"] else 200)


def routes() -> list[Route]:
    return [
        Route("POST", "/datasets/reg", dataset_reg, RegView, "Queue a dataset's regularisation images",
              status=202, also=(200,), body=DatasetRegRequest, errors=SUBMITS, rpc="dataset_reg",
              tag="dataset"),
    ]  # fmt: skip
