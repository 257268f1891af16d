"""Jobs: queue a generation or a page, list jobs, follow one (a long poll), its workflow, cancel,
retry, and approve a page."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from plasmad.api.contract import SUBMITS, Route
from plasmad.api.request import json_body, service
from plasmad.core.errors import invalid
from plasmad.core.wire import (
    ApproveBody,
    GenerateRequest,
    JobList,
    JobView,
    JobWaitParams,
    ListJobsParams,
    LogEntry,
    PageRequest,
    Workflow,
)


async def submit_job(request: web.Request) -> web.Response:
    return web.json_response(await service(request).submit(await json_body(request)), status=202)


async def submit_page(request: web.Request) -> web.Response:
    return web.json_response(await service(request).submit_page(await json_body(request)), status=202)


async def list_jobs(request: web.Request) -> web.StreamResponse:
    params: dict[str, Any] = dict(request.query)
    return await _json_list(request, await service(request).list_jobs(params))


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
        await service(request).get_job(request.match_info["id"], query.get("wait"), query.get("step"))
    )


async def get_job_workflow(request: web.Request) -> web.Response:
    return web.json_response(await service(request).job_workflow(request.match_info["id"]))


async def cancel_job(request: web.Request) -> web.Response:
    return web.json_response(await service(request).cancel_job(request.match_info["id"]))


async def retry_job(request: web.Request) -> web.Response:
    return web.json_response(await service(request).retry_job(request.match_info["id"]), status=202)


async def approve_image(request: web.Request) -> web.Response:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    return web.json_response(await service(request).approve({**body, "image": request.match_info["name"]}))


def routes() -> list[Route]:
    R = Route
    return [
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
    ]  # fmt: skip
