"""A FAKE ComfyUI: a scripted peer for what a real server will not do on demand.

Used for the orderings that are hard to provoke (events that arrive before `POST /prompt` has
answered, a WebSocket that drops or goes silent), for an Apple GPU (`devices` says mps), and for
API tests that need no real model. Everything else is tested against the real ComfyUI.

`scenario` picks what happens to the next prompt:
  fast     all events, success included, are sent before POST /prompt answers
  normal   progress events, then success, after POST answers
  drop     one progress event, then the WebSocket is closed; history fills later
  silent   no event at all; history fills later
  error    an execution_error event; history says error
  hang     nothing happens until /interrupt
  forget   the WebSocket drops and the prompt is gone from queue and history, as after a
           restart of ComfyUI; the next prompt runs normally (`forget_always`: it too is forgotten)
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from aiohttp import web

# A 2x2 PNG of four colours: a picture, as far as plasmad's one-colour check can tell.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR42mP4z8DA8J+BkYHh////DAAe9gT9CzF8CQAAAABJRU5ErkJggg=="
)
# A 2x2 all-black PNG: what ComfyUI writes when the UNet gives NaN (and says success).
BLACK_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAC0lEQVR42mNgQAcAABIAAeRVjecAAAAASUVORK5CYII="
)
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m"]
SCHEDULERS = ["normal", "karras", "simple"]


class FakeComfyUI:
    def __init__(self) -> None:
        self.scenario = "normal"
        self.devices: list[dict[str, Any]] = [{"name": "cpu", "type": "cpu"}]
        self.argv = ["main.py", "--fp32-vae"]
        self.history: dict[str, Any] = {}
        self.prompts: list[dict[str, Any]] = []
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.interrupted: list[str] = []
        self.deleted: list[str] = []
        self.freed = 0
        self.delay = 0.3  #: how long history takes to fill in drop / silent
        self.nodes: dict[str, Any] = {}  #: more /object_info answers: custom nodes a test says are installed
        self.image = PNG  #: what /view serves
        self.messages: list[Any] = []  #: the status messages a successful prompt's history lists
        #: When set, a `normal` prompt waits for it before it runs: the test acts meanwhile
        #: (fills a disk while the "render" is under way).
        self.gate: asyncio.Event | None = None
        self.forget_always = False
        self.running: set[str] = set()  #: prompts taken and not yet in the history (its /queue)
        self._hang: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/system_stats", self.system_stats),
                web.get("/object_info/{cls}", self.object_info),
                web.get("/ws", self.ws),
                web.post("/prompt", self.prompt),
                web.get("/history/{id}", self.get_history),
                web.get("/queue", self.queue),
                web.post("/queue", self.post_queue),
                web.post("/interrupt", self.interrupt),
                web.post("/free", self.free),
                web.get("/view", self.view),
            ]
        )

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "system": {"comfyui_version": "0.3.75-fake", "pytorch_version": "fake", "argv": self.argv},
                "devices": self.devices,
            }
        )

    async def object_info(self, request: web.Request) -> web.Response:
        cls = request.match_info["cls"]
        if cls == "KSampler":
            return web.json_response(
                {cls: {"input": {"required": {"sampler_name": [SAMPLERS], "scheduler": [SCHEDULERS]}}}}
            )
        if cls in self.nodes:
            return web.json_response({cls: self.nodes[cls]})
        return web.json_response({})

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets[request.query.get("clientId", "")] = ws
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}})
        async for _ in ws:
            pass
        return ws

    async def _send(self, client_id: str, kind: str, data: dict[str, Any]) -> None:
        ws = self.sockets.get(client_id)
        if ws is not None and not ws.closed:
            await ws.send_json({"type": kind, "data": data})

    def _succeed(self, prompt_id: str) -> None:
        self.running.discard(prompt_id)
        self.history[prompt_id] = {
            "prompt": [],
            "status": {"status_str": "success", "completed": True, "messages": list(self.messages)},
            "outputs": {
                "9": {"images": [{"filename": f"{prompt_id}.png", "subfolder": "", "type": "output"}]}
            },
        }

    def _fail(self, prompt_id: str, message: list[Any]) -> None:
        self.running.discard(prompt_id)
        self.history[prompt_id] = {
            "prompt": [],
            "outputs": {},
            "status": {"status_str": "error", "completed": False, "messages": [message]},
        }

    async def prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.prompts.append(body)
        prompt_id, client_id = body["prompt_id"], body.get("client_id", "")
        if self.scenario == "reject":
            return web.json_response(
                {
                    "error": {
                        "type": "prompt_outputs_failed_validation",
                        "message": "Prompt outputs failed validation",
                        "details": "",
                        "extra_info": {},
                    },
                    "node_errors": {
                        "1": {
                            "errors": [
                                {
                                    "type": "value_not_in_list",
                                    "message": "Value not in list",
                                    "details": "ckpt_name: 'x' not in []",
                                }
                            ],
                            "class_type": "CheckpointLoaderSimple",
                        }
                    },
                },
                status=400,
            )
        if self.scenario == "fast":
            await self._run_events(prompt_id, client_id)
        else:
            self.running.add(prompt_id)
            task = asyncio.create_task(self._later(prompt_id, client_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response({"prompt_id": prompt_id, "number": len(self.prompts), "node_errors": {}})

    async def _run_events(self, prompt_id: str, client_id: str) -> None:
        await self._send(client_id, "execution_start", {"prompt_id": prompt_id})
        for step in (1, 2):
            await self._send(
                client_id, "progress", {"value": step, "max": 2, "prompt_id": prompt_id, "node": "7"}
            )
        self._succeed(prompt_id)
        await self._send(client_id, "execution_success", {"prompt_id": prompt_id})
        await self._send(client_id, "executing", {"node": None, "prompt_id": prompt_id})

    async def _later(self, prompt_id: str, client_id: str) -> None:
        await asyncio.sleep(0.02)
        if self.scenario == "normal":
            if self.gate is not None:
                await self.gate.wait()
            await self._run_events(prompt_id, client_id)
        elif self.scenario == "drop":
            await self._send(
                client_id, "progress", {"value": 1, "max": 2, "prompt_id": prompt_id, "node": "7"}
            )
            ws = self.sockets.get(client_id)
            if ws is not None:
                await ws.close()
            await asyncio.sleep(self.delay)
            self._succeed(prompt_id)
        elif self.scenario == "forget":
            await self._send(
                client_id, "progress", {"value": 1, "max": 2, "prompt_id": prompt_id, "node": "7"}
            )
            self.running.discard(prompt_id)
            ws = self.sockets.pop(client_id, None)
            if ws is not None:
                await ws.close()
            if not self.forget_always:
                self.scenario = "normal"
        elif self.scenario == "silent":
            await asyncio.sleep(self.delay)
            self._succeed(prompt_id)
        elif self.scenario == "error":
            data = {
                "prompt_id": prompt_id,
                "node_id": "7",
                "node_type": "KSampler",
                "exception_type": "RuntimeError",
                "exception_message": "boom",
            }
            self._fail(prompt_id, ["execution_error", data])
            await self._send(client_id, "execution_error", data)
        elif self.scenario == "hang":
            event = self._hang.setdefault(prompt_id, asyncio.Event())
            await event.wait()
            data = {"prompt_id": prompt_id, "node_id": "7", "node_type": "KSampler"}
            self._fail(prompt_id, ["execution_interrupted", data])
            await self._send(client_id, "execution_interrupted", data)

    async def get_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["id"]
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def queue(self, request: web.Request) -> web.Response:
        taken = sorted(self.running | set(self._hang))
        running = [[0, pid, {}, {}, []] for pid in taken if pid not in self.history]
        return web.json_response({"queue_running": running, "queue_pending": []})

    async def post_queue(self, request: web.Request) -> web.Response:
        self.deleted.extend((await request.json()).get("delete", []))
        return web.Response()

    async def interrupt(self, request: web.Request) -> web.Response:
        body = await request.json() if request.body_exists else {}
        prompt_id = body.get("prompt_id", "")
        self.interrupted.append(prompt_id)
        if prompt_id in self._hang or prompt_id in self.running:
            # Also a prompt taken that has not reached its hang yet: it ends as soon as it does.
            self._hang.setdefault(prompt_id, asyncio.Event()).set()
        return web.Response()

    async def free(self, request: web.Request) -> web.Response:
        self.freed += 1
        return web.Response()

    async def view(self, request: web.Request) -> web.Response:
        return web.Response(body=self.image, content_type="image/png")
