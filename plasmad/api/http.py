"""The HTTP JSON API on 127.0.0.1:3000, for the artist's TypeScript pipeline (GEN-01).

Thin: each view parses the request and calls `Service`. Two middlewares: `guard` refuses what a
web page in the artist's browser could send (this API takes file paths: a foreign Host is DNS
rebinding, a foreign Origin is another site, a non-JSON body is a form post), and `errors` turns
every PlasmaError into its HTTP status and `{"error": {...}}` body.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from plasmad.api.service import Service
from plasmad.core.errors import ErrorCode, PlasmaError, invalid
from plasmad.core.events import Event
from plasmad.core.wire import MAX_BODY_BYTES, check_text

log = logging.getLogger(__name__)

SERVICE = web.AppKey("service", Service)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:3000
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _error_response(err: PlasmaError) -> web.Response:
    return web.json_response({"error": err.to_dict()}, status=err.code.http_status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PlasmaError as err:
        return _error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = ErrorCode.NOT_FOUND if exc.status in (404, 405) else ErrorCode.INVALID_INPUT
        if exc.status == 413:
            code = ErrorCode.PAYLOAD_TOO_LARGE
        msg = f"{request.method} {request.path}: {exc.reason}"
        return web.json_response({"error": PlasmaError(code, msg).to_dict()}, status=exc.status)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error_response(PlasmaError(ErrorCode.INTERNAL, "internal error; see plasmad's log"))


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    host = _host_name(request.headers.get("Host", ""))
    if host not in LOOPBACK_NAMES:
        raise PlasmaError(ErrorCode.FORBIDDEN, f"Host {host!r} is not a loopback name")
    origin = request.headers.get("Origin")
    if origin is not None and (urlparse(origin).hostname or "").lower() not in LOOPBACK_NAMES:
        raise PlasmaError(ErrorCode.FORBIDDEN, f"requests from {origin} are not accepted")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        # The types a web page may post cross-site without a CORS preflight are refused even when
        # empty; any other empty body is no body (aiohttp's client labels it octet-stream).
        ctype = request.content_type
        if ctype in FORM_TYPES or (request.body_exists and ctype != "application/json"):
            raise PlasmaError(
                ErrorCode.UNSUPPORTED_MEDIA,
                f"the body must be application/json, not {request.content_type or 'untyped'}",
            )
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise _too_large(request.content_length)
    # Odd text in the URL is refused here, for every route (issue 10); the body's in _body.
    for name, value in request.match_info.items():
        check_text(value, name)
    for name, value in request.query.items():
        check_text(name, name)
        check_text(value, name)
    return await handler(request)


def _too_large(size: int | None) -> PlasmaError:
    said = f"{size} bytes" if size else "over the limit"
    return PlasmaError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"the request body is {said}; plasmad takes at most {MAX_BODY_BYTES} bytes",
        details={"limit": MAX_BODY_BYTES},
    )


async def _body(request: web.Request) -> Any:
    if not request.body_exists:
        return {}
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer past Python's digit
        # limit; RecursionError a body nested deeper than the decoder goes. All are bad input.
        raise invalid("body", "is not valid JSON") from None
    except web.HTTPRequestEntityTooLarge:  # a chunked body, no Content-Length to refuse it by
        raise _too_large(None) from None
    except ConnectionResetError:
        # The client hung up mid-body: nobody to answer, nothing wrong here; no traceback.
        log.debug("%s %s: the client went away before its body arrived", request.method, request.path)
        raise invalid("body", "was cut short: the client went away") from None
    check_text(body)
    return body


def _svc(request: web.Request) -> Service:
    return request.app[SERVICE]


async def health(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).health())


async def submit_job(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).submit(await _body(request)), status=202)


async def submit_page(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).submit_page(await _body(request)), status=202)


async def list_jobs(request: web.Request) -> web.StreamResponse:
    params: dict[str, Any] = dict(request.query)
    return await _json_list(request, await _svc(request).list_jobs(params))


async def _json_list(request: web.Request, items: list[Any], per_turn: int = 10) -> web.StreamResponse:
    """A JSON array encoded and sent a slice at a time, yielding to the event loop between
    slices: 500 jobs are ~400 KB of JSON, whose encoding and whose one write to the socket would
    each hold up for milliseconds every request that polls one job meanwhile (issue 10). Ten a
    slice, as plasmad.jobs.ops.VIEWS_PER_TURN says why."""
    parts = []
    for start in range(0, len(items), per_turn):
        if start:
            await asyncio.sleep(0)
        parts.append(json.dumps(items[start : start + per_turn])[1:-1].encode())
    pieces = [b"[", *(b", " + p if i else p for i, p in enumerate(parts)), b"]"]
    resp = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    resp.content_length = sum(len(p) for p in pieces)
    await resp.prepare(request)
    for piece in pieces:
        await resp.write(piece)
        await asyncio.sleep(0)
    await resp.write_eof()
    return resp


async def get_job(request: web.Request) -> web.Response:
    query = request.query
    return web.json_response(
        await _svc(request).get_job(request.match_info["id"], query.get("wait"), query.get("step"))
    )


async def get_job_workflow(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).job_workflow(request.match_info["id"]))


async def cancel_job(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).cancel_job(request.match_info["id"]))


async def retry_job(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).retry_job(request.match_info["id"]), status=202)


async def approve_image(request: web.Request) -> web.Response:
    body = await _body(request)
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    return web.json_response(await _svc(request).approve({**body, "image": request.match_info["name"]}))


async def dataset_reg(request: web.Request) -> web.Response:
    result = await _svc(request).datasets.reg(await _body(request))
    return web.json_response(result, status=202 if result["queued"] else 200)


async def doctor(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).doctor())


async def start_bench(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).start_bench(await _body(request)), status=202)


async def bench_results(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).benchmarks.results(dict(request.query)))


async def daemon_log(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).logs(dict(request.query)))


async def job_log(request: web.Request) -> web.Response:
    params: dict[str, Any] = {**request.query, "job": request.match_info["id"]}
    return web.json_response(await _svc(request).logs(params))


async def train_lora(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).training.train(await _body(request)), status=202)


async def training_status(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).training.status(request.match_info["id"]))


async def list_loras(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).training.list_trainings())


async def cancel_training(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).training.cancel(request.match_info["id"]))


async def lora_samples(request: web.Request) -> web.Response:
    result = await _svc(request).training.samples(request.match_info["id"], await _body(request))
    return web.json_response(result, status=202 if result["state"] == "drawing" else 200)


async def lora_samples_status(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).training.samples_status(request.match_info["id"]))


async def promote_lora(request: web.Request) -> web.Response:
    result = await _svc(request).training.promote(request.match_info["id"], await _body(request))
    return web.json_response(result)


async def events(request: web.Request) -> web.StreamResponse:
    """`GET /events`: Server-Sent Events, each `event: <type>`, `id: <boot>-<n>`, JSON data.

    A client that reconnects with `Last-Event-ID` (browsers do it by themselves) first gets every
    newer event still kept. The stream ends when the client goes or the daemon stops."""
    bus = _svc(request).core.events
    async with sse_response(request) as resp:
        pump = asyncio.create_task(_pump(resp, bus.follow(resp.last_event_id)))
        gone = asyncio.create_task(resp.wait())  # its pings fail once the client has gone
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, gone):
                task.cancel()
            await asyncio.gather(pump, gone, return_exceptions=True)
    return resp


async def _pump(resp: EventSourceResponse, events: AsyncIterator[Event]) -> None:
    async for event in events:
        body = {"id": event.id, "type": event.type, "at": event.at, **event.data}
        await resp.send(json.dumps(body), id=event.id, event=event.type)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/health", health),
        web.post("/jobs", submit_job),
        web.post("/pages", submit_page),
        web.get("/jobs", list_jobs),
        web.get("/jobs/{id}", get_job),
        web.get("/jobs/{id}/workflow", get_job_workflow),
        web.post("/jobs/{id}/cancel", cancel_job),
        web.post("/jobs/{id}/retry", retry_job),  # issue 10
        web.post("/images/{name}/approve", approve_image),
        web.post("/datasets/reg", dataset_reg),
        web.post("/loras/train", train_lora),
        web.get("/loras", list_loras),
        web.get("/loras/{id}/status", training_status),
        web.post("/loras/{id}/cancel", cancel_training),
        web.post("/loras/{id}/samples", lora_samples),
        web.get("/loras/{id}/samples", lora_samples_status),
        web.post("/loras/{id}/promote", promote_lora),
        web.get("/doctor", doctor),
        web.post("/bench", start_bench),
        web.get("/bench", bench_results),
        web.get("/logs", daemon_log),
        web.get("/jobs/{id}/log", job_log),
        web.get("/events", events),
    ]


def create_app(
    service: Service | None = None, extra_routes: list[web.RouteDef] | None = None
) -> web.Application:
    """The HTTP app. Without `service`, whoever starts the app sets `app[SERVICE]` before it serves
    (the daemon does, in one of its cleanup contexts)."""
    app = web.Application(middlewares=[errors, guard], client_max_size=MAX_BODY_BYTES)
    if service is not None:
        app[SERVICE] = service
    app.add_routes(routes() + (extra_routes or []))
    return app
