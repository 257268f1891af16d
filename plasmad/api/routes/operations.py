"""Operating plasmad: the doctor's checks, the INFRA-04 benchmark, and the logs (the daemon's, a
job's, ComfyUI's)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from plasmad.api.contract import SUBMITS, Route
from plasmad.api.request import json_body, service
from plasmad.core.wire import (
    BenchRecord,
    BenchRequest,
    BenchResultsAnswer,
    BenchResultsParams,
    DoctorView,
    JobLogParams,
    LogsParams,
    LogsView,
)


async def doctor(request: web.Request) -> web.Response:
    return web.json_response(await service(request).doctor())


async def start_bench(request: web.Request) -> web.Response:
    return web.json_response(await service(request).start_bench(await json_body(request)), status=202)


async def bench_results(request: web.Request) -> web.Response:
    return web.json_response(await service(request).benchmarks.results(dict(request.query)))


async def daemon_log(request: web.Request) -> web.Response:
    return web.json_response(await service(request).logs(dict(request.query)))


async def job_log(request: web.Request) -> web.Response:
    params: dict[str, Any] = {**request.query, "job": request.match_info["id"]}
    return web.json_response(await service(request).logs(params))


def routes() -> list[Route]:
    R = Route
    return [
        R("GET", "/doctor", doctor, DoctorView, "Every INFRA requirement checked", rpc="doctor",
          tag="operations"),
        R("POST", "/bench", start_bench, BenchRecord, "Queue the INFRA-04 benchmark", status=202,
          body=BenchRequest, errors=SUBMITS, rpc="bench", tag="operations"),
        R("GET", "/bench", bench_results, BenchResultsAnswer, "Benchmark results", query=BenchResultsParams,
          errors=(404,), rpc="bench_results", tag="operations"),
        R("GET", "/logs", daemon_log, LogsView, "The daemon's log, a job's or ComfyUI's", query=LogsParams,
          errors=(404,), rpc="logs", tag="operations"),
        R("GET", "/jobs/{id}/log", job_log, LogsView, "One job's log", query=JobLogParams, tag="operations"),
    ]  # fmt: skip
