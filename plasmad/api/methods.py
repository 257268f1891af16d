"""The JSON-RPC methods of the socket API (plasmactl's), each declared once with its models.

`plasmad.api.rpc` dispatches them; `GET /openapi.json` lists them under `x-jsonrpc-methods` with
the same schemas as their HTTP routes. (Kept apart from `rpc`, which imports jsonrpcserver: the
HTTP side reads this list without it.)
"""

from __future__ import annotations

from plasmad.api.contract import RpcMethod
from plasmad.core.wire import (
    ApproveParams,
    BenchRecord,
    BenchRequest,
    BenchResultsAnswer,
    BenchResultsParams,
    ConsistencyRequest,
    DatasetRegRequest,
    DoctorView,
    GenerateRequest,
    HealthView,
    IdParams,
    JobList,
    JobView,
    ListJobsParams,
    LogEntry,
    LogsParams,
    LogsView,
    LorasView,
    LossView,
    ModelsView,
    PageRequest,
    PagesParams,
    PagesView,
    PromoteParams,
    PromoteView,
    RegView,
    ReproduceRequest,
    ReproductionView,
    RerollParams,
    SamplesView,
    ShutdownView,
    StatusParams,
    TrainingLossParams,
    TrainingView,
    TrainRequest,
    TrainSamplesParams,
    VaryParams,
    Workflow,
)


def methods() -> list[RpcMethod]:
    """The socket API, each method declared once with its models (listed in GET /openapi.json)."""
    M = RpcMethod
    return [
        M("health", lambda s, p: s.health(), HealthView, "ComfyUI up? on mps? what holds the GPU"),
        M("submit", lambda s, p: s.submit(p), JobView, "Queue a generation", GenerateRequest),
        M("generate_page", lambda s, p: s.submit_page(p), JobView, "Queue a page", PageRequest),
        M("status", lambda s, p: s.get_job(p.get("id"), p.get("wait"), p.get("step")), JobView,
          "A job; with `wait`, a long poll", StatusParams),
        M("jobs", lambda s, p: s.list_jobs(p), JobList, "Recent jobs", ListJobsParams),
        M("cancel", lambda s, p: s.cancel_job(p.get("id")), JobView, "Cancel a job", IdParams),
        M("retry", lambda s, p: s.retry_job(p.get("id")), JobView, "Run a failed job again", IdParams),
        M("workflow", lambda s, p: s.job_workflow(p.get("id")), Workflow, "A job's graph", IdParams),
        M("approve", lambda s, p: s.approve(p), LogEntry, "Approve a page", ApproveParams),
        M("dataset_reg", lambda s, p: s.datasets.reg(p), RegView, "Queue a reg set", DatasetRegRequest),
        M("train", lambda s, p: s.training.train(p), TrainingView, "Queue a training", TrainRequest),
        M("train_status", lambda s, p: s.training.status(p.get("id")), TrainingView, "A training", IdParams),
        M("loras", lambda s, p: s.training.list_trainings(p), LorasView, "Trainings and LoRAs"),
        M("train_cancel", lambda s, p: s.training.cancel(p.get("id")), TrainingView, "Stop a training",
          IdParams),
        M("lora_samples", lambda s, p: s.training.samples(p.pop("id", None), p), SamplesView,
          "Sample every checkpoint", TrainSamplesParams),
        M("lora_samples_status", lambda s, p: s.training.samples_status(p.get("id")), SamplesView,
          "Where the samples are", IdParams),
        M("lora_promote", lambda s, p: s.training.promote(p.pop("id", None), p), PromoteView,
          "Promote a checkpoint", PromoteParams),
        M("doctor", lambda s, p: s.doctor(), DoctorView, "Every INFRA requirement checked"),
        M("bench", lambda s, p: s.start_bench(p), BenchRecord, "Queue the benchmark", BenchRequest),
        M("bench_results", lambda s, p: s.benchmarks.results(p), BenchResultsAnswer, "Benchmark results",
          BenchResultsParams),
        M("logs", lambda s, p: s.logs(p), LogsView, "A log", LogsParams),
        M("reproduce", lambda s, p: s.reproduce(p), ReproductionView, "Render a page again and compare",
          ReproduceRequest),
        M("consistency", lambda s, p: s.consistency(p), ReproductionView, "Same-seed runs, compared",
          ConsistencyRequest),
        M("reproduction", lambda s, p: s.reproduction(p.get("id")), ReproductionView,
          "A reproduction or consistency check", IdParams),
        M("models", lambda s, p: s.models(), ModelsView, "Checkpoints, LoRAs and ControlNets"),
        M("shutdown", None, ShutdownView, "Stop plasmad in order (the same path as SIGTERM)"),
        # The review board's operations (issue 14); images and thumbnails are HTTP only.
        M("pages", lambda s, p: s.pages.list(p), PagesView, "Chapters, pages and versions", PagesParams),
        M("reroll", lambda s, p: s.reroll(p.pop("image", None), p), JobView, "Again with a new seed",
          RerollParams),
        M("vary", lambda s, p: s.vary(p.pop("image", None), p), JobView, "Same seed, another strength",
          VaryParams),
        M("training_loss", lambda s, p: s.training.loss(p.pop("id", None), p), LossView,
          "A training's loss at each step", TrainingLossParams),
    ]  # fmt: skip
