"""plasmad in-process over the FAKE ComfyUI: the daemon's objects wired as `plasmad.daemon` wires
them (a real Service, SQLite store, queue, GPU lock, generation handler and the repository's
templates), the real HTTP app over them, and the helpers the API tests poll and judge it with.

ComfyUI is the scripted FakeComfyUI (tests/fakes/fake_comfyui.py) and the models are FAKE
safetensors headers (tests/support/modelfiles.py).
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from plasmad.api.http import create_app
from plasmad.api.service import Service, build_service
from plasmad.comfy.client import ComfyClient
from plasmad.comfy.templates import TemplateSet
from plasmad.context import Core
from plasmad.core.config import BUNDLED_TEMPLATES, Config
from plasmad.core.errors import ErrorCode
from plasmad.core.gpu_lock import GpuLock
from plasmad.core.job_queue import JobQueue
from plasmad.core.store import JobStore
from tests.fakes.fake_comfyui import FakeComfyUI
from tests.support.modelfiles import CHECKPOINT_SD15, make_models_dir

with warnings.catch_warnings():
    # jsonrpcserver 5 reads its schema through importlib.resources' deprecated open_text when
    # imported, and warnings are errors here (the pyproject filter names the wrong module).
    warnings.simplefilter("ignore", DeprecationWarning)
    from jsonrpcserver import async_dispatch

    from plasmad.api.rpc import build_methods

FINISHED = ("succeeded", "failed", "cancelled", "interrupted")


# --- the stack ----------------------------------------------------------------------------------------


def make_config(root: Path, comfyui_url: str = "http://127.0.0.1:8188", **overrides: Any) -> Config:
    """A Config for a fresh tree under `root`: FAKE models, an empty pipeline, its own state dir."""
    comfyui = root / "ComfyUI"
    if not comfyui.exists():
        make_models_dir(comfyui)
    pipeline = root / "pipeline"
    pipeline.mkdir(exist_ok=True)
    cfg = Config(
        comfyui_url=comfyui_url,
        comfyui_dir=comfyui,
        state_dir=root / "state",
        pipeline_dir=pipeline,
        socket_path=root / "plasmad.sock",
        templates_dir=BUNDLED_TEMPLATES,
        checkpoint=CHECKPOINT_SD15,
        job_timeout_s=30.0,
        shutdown_grace_s=1.0,
        history_poll_s=0.05,  # the fake's history is ready at once; poll it quickly
    )
    return replace(cfg, **overrides)


@dataclass
class Stack:
    cfg: Config
    store: JobStore
    queue: JobQueue
    gpu: GpuLock
    comfy: ComfyClient
    service: Service

    @property
    def core(self) -> Core:
        return self.service.core


@asynccontextmanager
async def service_stack(cfg: Config, *, start_worker: bool = True) -> AsyncIterator[Stack]:
    """The daemon's objects wired as `plasmad.daemon` wires them, minus the listeners."""
    store = JobStore(cfg.db_path)
    await store.open()
    session = aiohttp.ClientSession()
    queue: JobQueue | None = None
    service: Service | None = None
    try:
        comfy = ComfyClient(cfg.comfyui_url, session, cfg.history_poll_s)
        service = build_service(cfg, store, comfy, TemplateSet(cfg.templates_dir))
        queue, monitor = service.core.queue, service.core.monitor
        await monitor.start(first_probe_s=2.0)
        await queue.recover()
        if start_worker:
            queue.start()
        yield Stack(cfg, store, queue, service.core.gpu, comfy, service)
    finally:
        if service is not None:
            service.core.stop_accepting()  # as the daemon stops: long polls and event streams end
        if queue is not None:
            await queue.stop(0.2)  # a job still hanging in the fake is parked, as at a real stop
        if service is not None:
            await service.benchmarks.close()
            await service.core.hasher.close()
            await service.core.monitor.stop()
        await session.close()
        await store.close()


@asynccontextmanager
async def fake_comfyui() -> AsyncIterator[tuple[FakeComfyUI, str]]:
    peer = FakeComfyUI()
    server = TestServer(peer.app, host="127.0.0.1")
    await server.start_server()
    try:
        yield peer, str(server.make_url("")).rstrip("/")
    finally:
        release_fake(peer)
        await server.close()


def release_fake(peer: FakeComfyUI) -> None:
    """End the fake's hanging prompts so that no task of it outlives the test."""
    for event in peer._hang.values():
        event.set()
    for task in list(peer._tasks):
        task.cancel()


# --- the HTTP app over it -----------------------------------------------------------------------------


@dataclass
class Api:
    client: TestClient[Any, Any]
    stack: Stack
    fake: FakeComfyUI

    @property
    def cfg(self) -> Config:
        return self.stack.cfg

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> aiohttp.ClientResponse:
        if body is not None:
            kwargs["json"] = body
        else:
            # aiohttp labels an empty POST application/octet-stream, which the guard refuses (415).
            kwargs.setdefault("headers", {}).setdefault("Content-Type", "application/json")
        return await self.client.post(path, **kwargs)

    async def submit(self, **body: Any) -> str:
        resp = await self.post("/jobs", {"prompt": "a girl with a plasma sword", **body})
        assert resp.status == 202, await resp.text()
        job = await resp.json()
        assert job["status"] == "queued" and job["id"].startswith("j_")
        return str(job["id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        resp = await self.client.get(f"/jobs/{job_id}")
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())

    async def wait_job(self, job_id: str, states: Iterable[str] = FINISHED) -> dict[str, Any]:
        wanted = set(states)

        async def reached() -> dict[str, Any] | None:
            job = await self.job(job_id)
            return job if job["status"] in wanted else None

        return dict(await eventually(reached, f"job {job_id} to reach {sorted(wanted)}"))


OpenApi = Callable[..., Awaitable[Api]]


async def start_api(
    exits: AsyncExitStack,
    root: Path,
    start_worker: bool = True,
    comfyui_url: str | None = None,
    **cfg: Any,
) -> Api:
    """The real app over a fresh FAKE ComfyUI and a stack under `root`, all closed by `exits`.

    `start_worker=False` leaves jobs queued; `comfyui_url` points the daemon elsewhere than the
    fake; `cfg` overrides Config fields (make_config)."""
    peer, url = await exits.enter_async_context(fake_comfyui())
    config = make_config(root, comfyui_url or url, **cfg)
    stack = await exits.enter_async_context(service_stack(config, start_worker=start_worker))
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(stack.service), host="127.0.0.1"))
    await client.start_server()
    exits.push_async_callback(client.close)
    return Api(client, stack, peer)


# --- polling and judging ------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 10.0) -> Any:
    """Poll `check` until it returns something truthy; the timeout only guards against a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await check()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return value


async def expect_error(resp: aiohttp.ClientResponse, status: int, field: str | None = None) -> dict[str, Any]:
    """The error body every refusal has: JSON, `error.code` matching the status, the field named."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", text
    error = json.loads(text)["error"]
    assert isinstance(error["code"], int) and isinstance(error["message"], str) and error["message"]
    if status in (400, 403, 404, 409, 415):
        assert ErrorCode(error["code"]).http_status == status
    if field is not None:
        assert error.get("field") == field, error
    return dict(error)


async def rpc(service: Service, method: str, params: Any) -> dict[str, Any]:
    """One JSON-RPC call through jsonrpcserver, exactly as the socket server dispatches it."""
    request = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
    response = await async_dispatch(request, methods=build_methods(), context=service)
    return dict(json.loads(response))
