"""The ComfyUI client: HTTP for commands, the WebSocket as a hint, `/history` as the truth.

GEN-02: the WebSocket is opened with our client_id *before* `POST /prompt`, so no event of our
prompt can fire unheard. But events get lost (a dropped socket, a socket gone silent after hours),
so completion is always confirmed from `/history/<prompt_id>`, and while the socket says nothing
the history is polled. Our own prompt_id is sent with the prompt (ComfyUI takes it), so a job
stored before the POST can be found again after a crash of either side.

Away, not slow: no call waits longer than it takes to tell (seconds: a local ComfyUI answers in
milliseconds even while it renders, its HTTP server runs beside the executor). A ComfyUI that is
gone, forgot our prompt (it restarted) or hung (`hang_s` of silence and no answer) raises
`ComfyAway`, which a job survives: it waits for ComfyUI and tries again (plasmad.generation.attempts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from plasmad.comfy.answers import ComfyAway, describe, outcome, rejection_message, unavailable
from plasmad.comfy.answers import ImageRef as ImageRef
from plasmad.comfy.catalogue import combo_choices
from plasmad.core.errors import ErrorCode, PlasmaError

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], Awaitable[None]]
TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})
_WS_GONE = frozenset(
    {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR}
)
#: What waiting on the socket brought: a non-final event (or a preview), our prompt's end, nothing
#: within the poll interval, or the socket's end. All but "event" send the wait to the history.
_Heard = Literal["event", "ended", "silence", "dropped"]

HTTP_TIMEOUT_S = 10.0  #: a command (POST /prompt, /object_info, /free)
PROBE_TIMEOUT_S = 5.0  #: a question that tells alive from away (/system_stats, /history, /queue)
WS_CONNECT_TIMEOUT_S = 5.0
VIEW_TIMEOUT_S = 30.0  #: an image download (a few MB from a local server)
HANG_S = 60.0  #: silence while a prompt runs before ComfyUI is asked whether it still answers


class ComfyClient:
    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        history_poll_s: float = 1.0,
        hang_s: float = HANG_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._ws_url = "ws" + self.base_url[len("http") :] + "/ws"
        self._session = session
        self._poll = history_poll_s
        self.hang_s = hang_s
        #: A tight hang limit (tests) asks for quick answers too.
        self.probe_timeout_s = min(PROBE_TIMEOUT_S, max(hang_s / 2, 1.0))
        self._object_info: dict[str, Any] = {}

    # --- plain HTTP ---------------------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, *, json_body: Any = None, timeout: float = HTTP_TIMEOUT_S
    ) -> tuple[int, Any]:
        try:
            async with self._session.request(
                method, self.base_url + path, json=json_body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                body = await resp.read()
                if resp.content_type == "application/json" and body:
                    return resp.status, json.loads(body)
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            raise unavailable(self.base_url, exc, timeout) from exc

    async def _get_json(self, path: str, timeout: float = HTTP_TIMEOUT_S) -> Any:
        status, body = await self._request("GET", path, timeout=timeout)
        if status != 200 or isinstance(body, bytes):
            raise unavailable(self.base_url, f"GET {path} answered HTTP {status}")
        return body

    async def system_stats(self, timeout: float | None = None) -> dict[str, Any]:
        body = await self._get_json("/system_stats", timeout=timeout or self.probe_timeout_s)
        return body if isinstance(body, dict) else {}

    async def object_info(self, node_class: str) -> dict[str, Any]:
        """One node class's description (cached: it changes only when ComfyUI restarts).

        `{}` when ComfyUI lacks the class. That answer is not cached: custom nodes installed and a
        ComfyUI we do not manage restarted must be seen without restarting plasmad.
        """
        if node_class in self._object_info:
            return dict(self._object_info[node_class])
        body = await self._get_json(f"/object_info/{node_class}")
        info = body.get(node_class, {}) if isinstance(body, dict) else {}
        if info:
            self._object_info[node_class] = info
        return dict(info)

    def forget_object_info(self) -> None:
        self._object_info.clear()

    async def input_choices(self, node_class: str, input_name: str) -> list[str]:
        """The values a combo input accepts (KSampler's sampler_name, LoraLoader's lora_name...)."""
        return combo_choices(await self.object_info(node_class), input_name)

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        body = await self._get_json(f"/history/{prompt_id}", timeout=self.probe_timeout_s)
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        return entry if isinstance(entry, dict) else None

    async def queue(self) -> dict[str, Any]:
        body = await self._get_json("/queue", timeout=self.probe_timeout_s)
        return body if isinstance(body, dict) else {}

    async def in_queue(self, prompt_id: str) -> bool:
        queue = await self.queue()
        items = [*queue.get("queue_running", []), *queue.get("queue_pending", [])]
        return any(len(item) > 1 and item[1] == prompt_id for item in items)

    async def interrupt(self, prompt_id: str) -> None:
        """Stop this prompt only: interrupt it if it runs, drop it if it still waits in ComfyUI's queue."""
        timeout = self.probe_timeout_s
        await self._request("POST", "/queue", json_body={"delete": [prompt_id]}, timeout=timeout)
        await self._request("POST", "/interrupt", json_body={"prompt_id": prompt_id}, timeout=timeout)

    async def free(self) -> None:
        """Unload models so that a trainer has the memory."""
        await self._request("POST", "/free", json_body={"unload_models": True, "free_memory": True})

    async def view(self, image: ImageRef) -> bytes:
        params = f"filename={_q(image.filename)}&subfolder={_q(image.subfolder)}&type={_q(image.type)}"
        status, body = await self._request("GET", f"/view?{params}", timeout=VIEW_TIMEOUT_S)
        if status != 200 or not isinstance(body, bytes):
            raise PlasmaError(
                ErrorCode.COMFYUI_REJECTED, f"ComfyUI has no image {image.filename} (HTTP {status})"
            )
        return body

    async def submit(self, graph: dict[str, Any], prompt_id: str, client_id: str) -> None:
        payload = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        status, body = await self._request("POST", "/prompt", json_body=payload)
        if status == 200 and isinstance(body, dict) and not body.get("node_errors"):
            return
        if isinstance(body, dict):
            raise PlasmaError(ErrorCode.COMFYUI_REJECTED, rejection_message(body), details=body)
        raise PlasmaError(ErrorCode.COMFYUI_REJECTED, f"ComfyUI refused the graph (HTTP {status})")

    # --- running a prompt ---------------------------------------------------------------------------

    async def run(
        self,
        graph: dict[str, Any],
        prompt_id: str,
        on_progress: ProgressCallback,
        timeout: float,
        *,
        require_images: bool = True,
        cancelled: asyncio.Event | None = None,
    ) -> list[ImageRef]:
        """Queue `graph` as `prompt_id` and wait until ComfyUI's history says how it ended.

        `require_images=False` for graphs whose output is a file, not an image (SaveLoRA)."""
        client_id = uuid.uuid4().hex
        ws: aiohttp.ClientWebSocketResponse | None
        try:
            # The session's own connect timeout is 300 s: a stopped ComfyUI accepts the TCP
            # connection (the kernel does) and never answers the upgrade.
            async with asyncio.timeout(WS_CONNECT_TIMEOUT_S):
                ws = await self._session.ws_connect(
                    f"{self._ws_url}?clientId={client_id}",
                    heartbeat=30.0,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ComfyAway(
                self.base_url,
                f"did not open its WebSocket: {describe(exc, WS_CONNECT_TIMEOUT_S)}",
                timed_out=isinstance(exc, TimeoutError),
            ) from exc
        try:
            if cancelled is not None and cancelled.is_set():
                raise PlasmaError(ErrorCode.CONFLICT, "cancelled before it reached ComfyUI")
            await self.submit(graph, prompt_id, client_id)  # only now: the socket already listens
            if cancelled is not None and cancelled.is_set():
                # Cancelled while the POST was under way: the interrupt sent then found nothing.
                await self.interrupt(prompt_id)
            return await self.wait(
                prompt_id, on_progress, timeout, ws, require_images=require_images, cancelled=cancelled
            )
        finally:
            await ws.close()

    async def wait(
        self,
        prompt_id: str,
        on_progress: ProgressCallback,
        timeout: float,
        ws: aiohttp.ClientWebSocketResponse | None = None,
        *,
        require_images: bool = True,
        cancelled: asyncio.Event | None = None,
    ) -> list[ImageRef]:
        """Wait for an already queued prompt. Without a socket (after a restart) history alone tells.

        `cancelled`: set once the prompt was interrupted or taken out of ComfyUI's queue. A prompt
        removed before it started leaves no history and sends no event, so then the wait ends as
        soon as ComfyUI's queue no longer holds it.
        """
        deadline = time.monotonic() + timeout
        watch = _Watch(self, prompt_id, cancelled)
        while True:
            if time.monotonic() > deadline:
                raise PlasmaError(
                    ErrorCode.COMFYUI_UNAVAILABLE,
                    f"ComfyUI did not finish prompt {prompt_id} within {timeout:.0f} s (PLASMA_JOB_TIMEOUT)",
                )
            heard: _Heard = "silence"
            if ws is not None and not ws.closed:
                heard = await self._listen(ws, prompt_id, on_progress)
                if heard in ("event", "ended"):
                    watch.alive()
                if heard == "event":
                    continue  # keep draining events; history is asked on silence or the end
                if heard == "dropped":
                    log.warning("ComfyUI WebSocket dropped while waiting for %s; polling /history", prompt_id)
                    ws = None
            else:
                await asyncio.sleep(self._poll)
            entry = await watch.poll(ended=heard == "ended", socket=ws is not None and not ws.closed)
            if entry is not None:
                status = entry.get("status", {})
                if status.get("completed") or status.get("status_str") in ("success", "error"):
                    return outcome(prompt_id, entry, require_images)

    async def responsive(self) -> str | None:
        """None when ComfyUI's server answers `/system_stats` and `/queue` within the probe
        timeout; else why not."""
        try:
            await self.system_stats()
            await self.queue()
        except ComfyAway as exc:
            return exc.reason
        return None

    async def _listen(
        self, ws: aiohttp.ClientWebSocketResponse, prompt_id: str, on_progress: ProgressCallback
    ) -> _Heard:
        """One message from the socket, or silence after the poll interval."""
        try:
            msg = await ws.receive(timeout=self._poll)
        except TimeoutError:
            return "silence"
        if msg.type == aiohttp.WSMsgType.TEXT:
            return "ended" if await self._on_event(msg.data, prompt_id, on_progress) else "event"
        if msg.type in _WS_GONE:
            return "dropped"
        return "event"  # binary previews

    async def history_after(self, prompt_id: str, *, ended: bool) -> dict[str, Any] | None:
        """The prompt's history entry; after its end event, retried briefly until it is written."""
        entry = await self.history(prompt_id)
        if entry is None and ended:
            # The end event can beat the history write by a few milliseconds.
            for _ in range(40):
                await asyncio.sleep(0.025)
                if (entry := await self.history(prompt_id)) is not None:
                    break
        return entry

    async def _on_event(self, data: str, prompt_id: str, on_progress: ProgressCallback) -> bool:
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            return False
        kind, body = event.get("type"), event.get("data") or {}
        if not isinstance(body, dict) or body.get("prompt_id") != prompt_id:
            return False
        if kind == "progress":
            try:
                await on_progress(int(body["value"]), int(body["max"]))
            except (KeyError, TypeError, ValueError):
                pass
            return False
        if kind == "executing" and body.get("node") is None:
            return True
        return kind in TERMINAL_EVENTS


class _Watch:
    """One prompt's wait: when ComfyUI last showed life, and the checks that tell a prompt still
    running from one ComfyUI forgot (a restart) or one stuck in a ComfyUI that no longer answers."""

    def __init__(self, client: ComfyClient, prompt_id: str, cancelled: asyncio.Event | None) -> None:
        self._client = client
        self._prompt_id = prompt_id
        self._cancelled = cancelled
        self._alive_at = time.monotonic()

    def alive(self) -> None:
        self._alive_at = time.monotonic()

    async def poll(self, *, ended: bool, socket: bool) -> dict[str, Any] | None:
        """The prompt's history entry, or None while it runs. Raises ComfyAway when ComfyUI is gone,
        lost the prompt or hung; PlasmaError when the prompt was taken out of its queue (a cancel)."""
        client, prompt_id = self._client, self._prompt_id
        try:
            entry = await client.history_after(prompt_id, ended=ended)
            self.alive()
            cancelled = self._cancelled is not None and self._cancelled.is_set()
            if entry is None and (not socket or cancelled):
                # No socket, so no end event can come. A prompt neither queued nor in the history is
                # gone; asked in this order, because ComfyUI moves a finished prompt from its queue to
                # its history in one step.
                queued = await client.in_queue(prompt_id)
                if not queued and (entry := await client.history(prompt_id)) is None:
                    if cancelled:
                        raise PlasmaError(
                            ErrorCode.COMFYUI_REJECTED, "removed from ComfyUI's queue before it started"
                        )
                    raise ComfyAway(client.base_url, f"no longer has prompt {prompt_id} (it restarted?)")
            return entry
        except ComfyAway as exc:
            if not exc.timed_out or exc.hung:
                raise  # refused or reset: the process is gone; or it forgot the prompt
            await self._unless_hung(exc)
            return None

    async def _unless_hung(self, exc: ComfyAway) -> None:
        """A question went unanswered: slow or hung? Hung once nothing has been heard for hang_s and
        ComfyUI's server does not answer the simplest questions either."""
        silent = time.monotonic() - self._alive_at
        if silent < self._client.hang_s:
            log.info("ComfyUI slow to answer (%s); %.0f s of silence so far", exc.reason, silent)
            return
        why = await self._client.responsive()
        if why is None:
            self.alive()  # slow, not hung: its server answers
            return
        raise ComfyAway(
            self._client.base_url,
            f"hung: nothing heard for {silent:.0f} s while prompt {self._prompt_id} ran, and it {why}",
            hung=True,
        )


def _q(value: str) -> str:
    return quote(value, safe="")
