"""`GET /models` (issue 11): the checkpoints, LoRAs and ControlNets a request may name."""

from __future__ import annotations

from aiohttp import web

from plasmad.api.contract import Route
from plasmad.api.request import service
from plasmad.core.wire import ModelsView


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(await service(request).models())


def routes() -> list[Route]:
    return [
        Route("GET", "/models", list_models, ModelsView,
              "Checkpoints, LoRAs and ControlNets a request may name", errors=(503,), rpc="models",
              tag="operations"),
    ]  # fmt: skip
