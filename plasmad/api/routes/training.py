"""LoRA trainings: queue one, list them, follow one, stop it, sample its checkpoints (LORA-02) and
promote one (LORA-03). Its loss log is the review board's (`routes.board`)."""

from __future__ import annotations

from aiohttp import web

from plasmad.api.contract import SUBMITS, Route
from plasmad.api.request import json_body, service
from plasmad.core.wire import (
    LorasView,
    PromoteRequest,
    PromoteView,
    SamplesView,
    TrainingView,
    TrainRequest,
    TrainSamplesRequest,
)


async def train_lora(request: web.Request) -> web.Response:
    return web.json_response(await service(request).training.train(await json_body(request)), status=202)


async def training_status(request: web.Request) -> web.Response:
    return web.json_response(await service(request).training.status(request.match_info["id"]))


async def list_loras(request: web.Request) -> web.Response:
    return web.json_response(await service(request).training.list_trainings())


async def cancel_training(request: web.Request) -> web.Response:
    return web.json_response(await service(request).training.cancel(request.match_info["id"]))


async def lora_samples(request: web.Request) -> web.Response:
    result = await service(request).training.samples(request.match_info["id"], await json_body(request))
    return web.json_response(result, status=202 if result["state"] == "drawing" else 200)


async def lora_samples_status(request: web.Request) -> web.Response:
    return web.json_response(await service(request).training.samples_status(request.match_info["id"]))


async def promote_lora(request: web.Request) -> web.Response:
    result = await service(request).training.promote(request.match_info["id"], await json_body(request))
    return web.json_response(result)


def routes() -> list[Route]:
    R = Route
    return [
        R("POST", "/loras/train", train_lora, TrainingView, "Queue a LoRA training", status=202,
          body=TrainRequest, errors=SUBMITS, rpc="train", tag="training"),
        R("GET", "/loras", list_loras, LorasView, "Trainings, and the LoRAs ComfyUI can load", errors=(503,),
          rpc="loras", tag="training"),
        R("GET", "/loras/{id}/status", training_status, TrainingView, "A training: step, loss, time left",
          rpc="train_status", tag="training"),
        R("POST", "/loras/{id}/cancel", cancel_training, TrainingView, "Stop a training", errors=(409,),
          rpc="train_cancel", tag="training"),
        R("POST", "/loras/{id}/samples", lora_samples, SamplesView, "Sample every checkpoint", status=202,
          also=(200,), body=TrainSamplesRequest, errors=SUBMITS, rpc="lora_samples", tag="training"),
        R("GET", "/loras/{id}/samples", lora_samples_status, SamplesView, "Where the samples are",
          rpc="lora_samples_status", tag="training"),
        R("POST", "/loras/{id}/promote", promote_lora, PromoteView, "Copy a checkpoint into ComfyUI's loras",
          body=PromoteRequest, errors=(409, 503), rpc="lora_promote", tag="training"),
    ]  # fmt: skip
