"""`GET /health`: is ComfyUI up, on mps, with an fp32 VAE; what holds the GPU."""

from __future__ import annotations

from aiohttp import web

from plasmad.api.contract import Route
from plasmad.api.request import service
from plasmad.core.wire import HealthView


async def health(request: web.Request) -> web.Response:
    return web.json_response(await service(request).health())


def routes() -> list[Route]:
    return [
        Route("GET", "/health", health, HealthView, "ComfyUI up? on mps? fp32 VAE? what holds the GPU",
              rpc="health", tag="operations"),
    ]  # fmt: skip
