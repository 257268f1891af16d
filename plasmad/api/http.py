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
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlparse

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from plasmad.api import board, openapi
from plasmad.api.contract import EVENT_STREAM, Handler, Header, Route
from plasmad.api.methods import methods as rpc_methods
from plasmad.api.service import Service
from plasmad.core.errors import ErrorCode, PlasmaError, invalid
from plasmad.core.events import Event
from plasmad.core.wire import (
    MAX_BODY_BYTES,
    ApproveBody,
    BenchRecord,
    BenchRequest,
    BenchResultsAnswer,
    BenchResultsParams,
    ConsistencyRequest,
    DatasetRegRequest,
    DoctorView,
    GenerateRequest,
    HealthView,
    JobList,
    JobLogParams,
    JobView,
    JobWaitParams,
    ListJobsParams,
    LogEntry,
    LogsParams,
    LogsView,
    LorasView,
    LossParams,
    LossView,
    ModelsView,
    OpenApiDocument,
    PageRequest,
    PagesParams,
    PagesView,
    PlasmaEvent,
    PromoteRequest,
    PromoteView,
    RegView,
    ReproduceBody,
    ReproductionView,
    RerollRequest,
    SamplesView,
    ThumbnailParams,
    TrainingView,
    TrainRequest,
    TrainSamplesRequest,
    VaryRequest,
    Workflow,
    check_text,
)

log = logging.getLogger(__name__)

SERVICE = web.AppKey("service", Service)
ROUTES = web.AppKey("routes", Sequence[Route])
OPENAPI = web.AppKey("openapi", dict[str, Any])
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
        # A 405 keeps its Allow header: it tells a client which methods the path has.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        body = {"error": PlasmaError(code, msg).to_dict()}
        return web.json_response(body, status=exc.status, headers=allow)
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


# --- reproductions and consistency checks (issue 12) ----------------------------------------------


async def reproduce_image(request: web.Request) -> web.Response:
    body = await _body(request)
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    answer = await _svc(request).reproduce({**body, "image": request.match_info["name"]})
    return web.json_response(answer, status=202)


async def start_consistency(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).consistency(await _body(request)), status=202)


async def get_reproduction(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).reproduction(request.match_info["id"]))


async def get_consistency(request: web.Request) -> web.Response:
    return await get_reproduction(request)  # one store of records; a name per route in the spec


# --------------------------------------------------------------------------------------------------


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


# --- model listing (issue 11) -------------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).models())


async def events(request: web.Request) -> web.StreamResponse:
    """`GET /events`: Server-Sent Events, each `event: <type>`, `id: <boot>-<n>`, JSON data.

    A client that reconnects with `Last-Event-ID` (browsers do it by themselves) first gets every
    newer event still kept. The stream ends when the client goes or the daemon stops."""
    # The starting point is taken before the headers go out: once a client has them, every later
    # event reaches it (it may submit a job right away and follow it).
    following = _svc(request).core.events.follow(request.headers.get("Last-Event-ID"))
    async with sse_response(request) as resp:
        pump = asyncio.create_task(_pump(resp, following))
        gone = asyncio.create_task(resp.wait())  # its pings fail once the client has gone
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, gone):
                task.cancel()
            await asyncio.gather(pump, gone, return_exceptions=True)
    return resp


async def openapi_document(request: web.Request) -> web.Response:
    """`GET /openapi.json`: written once per app from its routes (they do not change once it runs)."""
    cache = request.app[OPENAPI]
    if "doc" not in cache:
        cache["doc"] = openapi.build(request.app[ROUTES], rpc_methods())
    return web.json_response(cache["doc"])


async def _pump(resp: EventSourceResponse, events: AsyncIterator[Event]) -> None:
    async for event in events:
        body = {"id": event.id, "type": event.type, "at": event.at, **event.data}
        await resp.send(json.dumps(body), id=event.id, event=event.type)


# --- the review board (issue 14): pages and versions, their images, new versions, the loss log ------
# Images are files sent as they are (aiohttp's FileResponse: off the event loop, with ETag and
# conditional requests); the board itself is `plasmad.api.board`.

IMAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


async def list_pages(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).pages.list(dict(request.query)))


async def page_image(request: web.Request) -> web.StreamResponse:
    path = await _svc(request).pages.image(request.match_info["name"])
    return web.FileResponse(path, headers=IMAGE_HEADERS)


async def page_thumbnail(request: web.Request) -> web.StreamResponse:
    path = await _svc(request).pages.thumbnail(request.match_info["name"], dict(request.query))
    return web.FileResponse(path, headers=IMAGE_HEADERS)


async def page_workflow(request: web.Request) -> web.Response:
    return web.json_response(await _svc(request).pages.workflow(request.match_info["name"]))


async def reroll_page(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(await _svc(request).reroll(request.match_info["name"], body), status=202)


async def vary_page(request: web.Request) -> web.Response:
    body = await _body(request)
    return web.json_response(await _svc(request).vary(request.match_info["name"], body), status=202)


async def job_image(request: web.Request) -> web.StreamResponse:
    path = await _svc(request).pages.job_image(request.match_info["id"])
    return web.FileResponse(path, headers=IMAGE_HEADERS)


async def job_thumbnail(request: web.Request) -> web.StreamResponse:
    path = await _svc(request).pages.job_thumbnail(request.match_info["id"], dict(request.query))
    return web.FileResponse(path, headers=IMAGE_HEADERS)


async def training_loss(request: web.Request) -> web.Response:
    result = await _svc(request).training.loss(request.match_info["id"], dict(request.query))
    return web.json_response(result)


# --- the routes, each declared once with its models: served here, described by GET /openapi.json ---

SUBMITS = (409, 503)  # a staged file in the way; ComfyUI, a setting or the daemon (stopping) missing
NAMED = (400, 503)  # a name that is not chXX_pNNN_vN; no pipeline folder configured
PNG, JPEG, HTML, JS = "image/png", "image/jpeg", "text/html", "text/javascript"  # answers that are files


def routes() -> list[Route]:
    R, H = Route, Header
    return [
        R("GET", "/health", health, HealthView, "ComfyUI up? on mps? fp32 VAE? what holds the GPU",
          rpc="health", tag="operations"),
        R("POST", "/jobs", submit_job, JobView, "Queue a generation", status=202, body=GenerateRequest,
          errors=SUBMITS, rpc="submit"),
        R("POST", "/pages", submit_page, JobView, "Queue a page from its prompt file", status=202,
          body=PageRequest, errors=(404, *SUBMITS), rpc="generate_page"),
        R("GET", "/jobs", list_jobs, JobList, "Recent jobs, newest first", query=ListJobsParams, rpc="jobs"),
        R("GET", "/jobs/{id}", get_job, JobView, "A job; with `wait`, a long poll", query=JobWaitParams,
          rpc="status"),
        R("GET", "/jobs/{id}/workflow", get_job_workflow, Workflow, "The exact graph of a job",
          rpc="workflow"),
        R("POST", "/jobs/{id}/cancel", cancel_job, JobView, "Cancel a queued or running job", errors=(409,),
          rpc="cancel"),
        R("POST", "/jobs/{id}/retry", retry_job, JobView, "Run a failed or cancelled generation again",
          status=202, errors=(409, 503), rpc="retry"),
        R("POST", "/images/{name}/approve", approve_image, LogEntry, "Approve a page (its log entry)",
          body=ApproveBody, errors=(409, 503), rpc="approve"),
        R("POST", "/datasets/reg", dataset_reg, RegView, "Queue a dataset's regularisation images",
          status=202, also=(200,), body=DatasetRegRequest, errors=SUBMITS, rpc="dataset_reg", tag="dataset"),
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
        R("GET", "/doctor", doctor, DoctorView, "Every INFRA requirement checked", rpc="doctor",
          tag="operations"),
        R("POST", "/bench", start_bench, BenchRecord, "Queue the INFRA-04 benchmark", status=202,
          body=BenchRequest, errors=SUBMITS, rpc="bench", tag="operations"),
        R("GET", "/bench", bench_results, BenchResultsAnswer, "Benchmark results", query=BenchResultsParams,
          errors=(404,), rpc="bench_results", tag="operations"),
        R("GET", "/logs", daemon_log, LogsView, "The daemon's log, a job's or ComfyUI's", query=LogsParams,
          errors=(404,), rpc="logs", tag="operations"),
        R("GET", "/jobs/{id}/log", job_log, LogsView, "One job's log", query=JobLogParams, tag="operations"),
        R("GET", "/events", events, PlasmaEvent, "Live events (Server-Sent Events)", media_type=EVENT_STREAM,
          headers=(H("Last-Event-ID", "the last event id seen: replay what came after it"),), tag="events",
          description=events.__doc__),
        R("GET", "/openapi.json", openapi_document, OpenApiDocument, "This document", tag="operations"),
        # Reproductions and consistency checks (issue 12).
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
        R("GET", "/models", list_models, ModelsView, "Checkpoints, LoRAs and ControlNets a request may name",
          errors=(503,), rpc="models", tag="operations"),
        # The review board (issue 14): pages and versions, their images, new versions, the loss log,
        # and the board's own files (plasmad.api.board).
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
        R("GET", "/", board.index, None, "The review board", media_type=HTML, tag="board"),
        R("GET", "/board/{name}", board.asset, None, "The board's scripts and styles", media_type=JS,
          tag="board"),
    ]  # fmt: skip


def create_app(service: Service | None = None, extra_routes: list[Route] | None = None) -> web.Application:
    """The HTTP app. Without `service`, whoever starts the app sets `app[SERVICE]` before it serves
    (the daemon does, in one of its cleanup contexts)."""
    app = web.Application(middlewares=[errors, guard], client_max_size=MAX_BODY_BYTES)
    if service is not None:
        app[SERVICE] = service
    table = routes() + (extra_routes or [])
    app[ROUTES] = table
    app[OPENAPI] = {}  # filled at the first GET /openapi.json (the app's state is frozen by then)
    app.add_routes([r.route_def() for r in table])
    return app
