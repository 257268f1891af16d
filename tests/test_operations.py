"""Operating plasmad: doctor, the benchmark (INFRA-04), per-job logs; the daemon's side and the CLI's.

In-process against the real Service, store, queue and templates over the FAKE ComfyUI peer
(tests/fakes/fake_comfyui.py), with FAKE model headers (tests/support/modelfiles.py) and a FAKE kohya
Python (tests/support/kohya.py) where the real thing cannot run here: an Apple GPU, kohya's venv.
tests/test_comfy_process.py covers the same logs through a real plasmad process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from plasmad.comfy.catalogue import template_classes
from plasmad.core.config import BUNDLED_TEMPLATES
from plasmad.core.job_logs import JobFileHandler, JobTagFilter, job_context
from plasmad.core.states import JobKind, JobStatus
from plasmad.core.store import Job
from plasmad.generation.timing import StepTimer
from plasmad.operations import bench as bench_module
from plasmad.operations.bench import Bench
from plasmad.operations.doctor import Doctor
from plasmad.operations.doctor import disk as doctor_disk
from plasmad.operations.logs import read_log
from tests.support.app import Api, OpenApi, eventually, expect_error, rpc
from tests.support.cli import DaemonThread, ctl, run_cli
from tests.support.kohya import answer, fake_python, sd_scripts
from tests.support.modelfiles import CHECKPOINT_SD15, CHECKPOINT_SDXL

MAC_ARGV = ["main.py", "--force-fp16", "--fp32-vae", "--listen", "127.0.0.1", "--port", "8188"]
CONTROLNET = "control_v11p_sd15_openpose.pth"


def install_everything(a: Api, *, with_nodes: bool = True) -> None:
    """A ComfyUI with every node the templates use, the custom nodes, and the models listed."""
    if with_nodes:
        for cls in {*template_classes(BUNDLED_TEMPLATES), "OpenposePreprocessor"}:
            a.fake.nodes[cls] = {"input": {"required": {"image": ["IMAGE"]}}}
    a.fake.nodes["CheckpointLoaderSimple"] = {"input": {"required": {"ckpt_name": [[CHECKPOINT_SD15]]}}}
    a.fake.nodes["ControlNetLoader"] = {"input": {"required": {"control_net_name": [[CONTROLNET]]}}}
    comfyui = a.cfg.comfyui_dir
    assert comfyui is not None
    (comfyui / "models" / "controlnet").mkdir(parents=True, exist_ok=True)
    (comfyui / "models" / "controlnet" / CONTROLNET).write_bytes(b"PK\x03\x04 FAKE torch.save archive")
    (comfyui / "custom_nodes" / "ComfyUI-Manager").mkdir(parents=True, exist_ok=True)


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in report["checks"]}


@pytest.fixture(autouse=True)
def no_accelerate_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("ACCELERATE_CONFIG_FILE", raising=False)


# --- doctor -------------------------------------------------------------------------------------------


async def test_doctor_on_the_artists_mac_is_all_ok(api: Api, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COMFYUI_DISK_WARN_GB", "COMFYUI_DISK_FAIL_GB", "STATE_DISK_WARN_GB", "STATE_DISK_FAIL_GB"):
        monkeypatch.setattr(doctor_disk, name, 0.0)  # whatever this machine's disk holds
    install_everything(api)
    api.fake.devices = [{"name": "mps", "type": "mps"}]
    api.fake.argv = MAC_ARGV
    kohya = answer("mps", "1.10.1") | {"torch": "2.5.1"}
    cfg = replace(api.cfg, kohya_python=fake_python(tmp_path, kohya), kohya_script=sd_scripts(tmp_path),
                  controlnet=CONTROLNET)
    report = await Doctor(cfg, api.stack.comfy, platform="darwin").run()
    assert report["ok"] is True
    problems = [c for c in report["checks"] if c["status"] != "ok"]
    assert problems == []
    checks = by_id(report)
    assert set(checks) >= {
        "comfyui.reachable", "comfyui.version", "comfyui.fp16_unet", "comfyui.fp32_vae", "comfyui.device",
        "models.checkpoint", "models.controlnet", "nodes.controlnet_aux", "nodes.manager", "kohya.configured",
        "kohya.python", "kohya.torch", "kohya.mps", "kohya.cuda_only", "kohya.accelerate", "disk.state",
        "disk.comfyui",
    }
    assert "SD 1.5, by its header" in checks["models.checkpoint"]["detail"]
    assert "--mixed_precision fp16" in checks["kohya.accelerate"]["detail"]
    assert all(c["requirement"] and c["title"] for c in report["checks"])


async def test_doctor_names_each_problem_and_its_fix(api: Api, tmp_path: Path) -> None:
    install_everything(api, with_nodes=False)  # no OpenposePreprocessor, no ModelComputeDtype...
    api.fake.devices = [{"name": "cpu", "type": "cpu"}]
    api.fake.argv = ["main.py", "--cpu"]  # neither --force-fp16 nor --fp32-vae
    kohya = answer("cpu", "1.7.0") | {"python": "3.12.1", "torch": "2.6.0",
                                        "installed": {"torchvision": True, "bitsandbytes": True}}
    cfg = replace(api.cfg, checkpoint=CHECKPOINT_SDXL, controlnet="missing_openpose.pth", unet_dtype="fp16",
                  kohya_python=fake_python(tmp_path, kohya), kohya_script=sd_scripts(tmp_path),
                  kohya_extra_args=("--optimizer_type", "AdamW8bit"))
    report = await Doctor(cfg, api.stack.comfy, platform="darwin").run()
    assert report["ok"] is False
    checks = by_id(report)
    status = {k: v["status"] for k, v in checks.items()}
    assert status["comfyui.reachable"] == "ok"
    assert status["comfyui.version"] == "fail" and "ModelComputeDtype" in checks["comfyui.version"]["detail"]
    assert status["comfyui.fp16_unet"] == "warn" and "100x slower" in checks["comfyui.fp16_unet"]["detail"]
    assert status["comfyui.fp32_vae"] == "warn" and "--fp32-vae" in checks["comfyui.fp32_vae"]["fix"]
    assert status["comfyui.device"] == "fail"  # on a Mac, ComfyUI must use the Apple GPU
    assert status["models.checkpoint"] == "fail" and "SDXL" in checks["models.checkpoint"]["detail"]
    assert CHECKPOINT_SD15 in checks["models.checkpoint"]["fix"]  # it names the one that would do
    assert status["models.controlnet"] == "warn" and "huggingface" in checks["models.controlnet"]["fix"]
    assert status["nodes.controlnet_aux"] == "warn" and "git clone" in checks["nodes.controlnet_aux"]["fix"]
    assert status["kohya.python"] == "warn" and "3.11" in checks["kohya.python"]["fix"]
    assert status["kohya.torch"] == "warn" and "2.5.1" in checks["kohya.torch"]["fix"]
    assert status["kohya.mps"] == "fail"
    assert status["kohya.cuda_only"] == "warn" and "adamw8bit" in checks["kohya.cuda_only"]["detail"]
    assert status["kohya.accelerate"] == "ok"  # no fp16 question off the Apple GPU; fp32 is chosen
    for check in report["checks"]:
        if check["status"] != "ok":
            assert check["fix"], check  # every problem comes with what to do


async def test_doctor_fp32_vae_is_a_failure_on_the_apple_gpu(api: Api) -> None:
    install_everything(api)
    api.fake.devices = [{"name": "mps", "type": "mps"}]
    api.fake.argv = ["main.py", "--force-fp16"]
    report = await Doctor(api.cfg, api.stack.comfy, platform="darwin").run()
    assert by_id(report)["comfyui.fp32_vae"]["status"] == "fail"


async def test_doctor_when_comfyui_is_down(open_api: OpenApi) -> None:
    a = await open_api(comfyui_url="http://127.0.0.1:9")
    report = await Doctor(a.cfg, a.stack.comfy, platform="linux").run()
    checks = by_id(report)
    assert report["ok"] is False
    assert checks["comfyui.reachable"]["status"] == "fail"
    assert "--force-fp16 --fp32-vae" in checks["comfyui.reachable"]["fix"]
    assert "COMFYUI_MANAGED=1" in checks["comfyui.reachable"]["fix"]
    for id in ("comfyui.version", "comfyui.fp32_vae", "comfyui.device", "nodes.controlnet_aux"):
        assert checks[id]["status"] == "warn" and "not checked" in checks[id]["detail"]
    # The model files are still judged by their headers.
    assert checks["models.checkpoint"]["status"] == "ok"


async def test_doctor_through_both_apis(api: Api) -> None:
    install_everything(api)
    resp = await api.client.get("/doctor")
    assert resp.status == 200
    http = await resp.json()
    answer_ = await rpc(api.stack.service, "doctor", {})
    assert [c["id"] for c in http["checks"]] == [c["id"] for c in answer_["result"]["checks"]]
    assert http["counts"]["ok"] + http["counts"]["warn"] + http["counts"]["fail"] == len(http["checks"])


async def test_doctor_reads_accelerates_config(api: Api, tmp_path: Path) -> None:
    config = tmp_path / "hf" / "accelerate" / "default_config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\n"
                      "mixed_precision: fp16\nuse_cpu: true\n")
    kohya = fake_python(tmp_path, answer("mps"))
    cfg = replace(api.cfg, kohya_python=kohya, kohya_script=sd_scripts(tmp_path))
    report = await Doctor(cfg, api.stack.comfy, platform="darwin").run()
    check = by_id(report)["kohya.accelerate"]
    assert check["status"] == "warn"
    assert "use_cpu: true" in check["detail"] and "MULTI_GPU".lower() in check["detail"]


def test_cli_doctor_renders_and_exits_9_on_a_failure(daemon: DaemonThread) -> None:
    result = ctl(daemon, "doctor")  # the FAKE ComfyUI lacks the templates' nodes: a failure
    assert result.exit_code == 9, result.output
    assert "fail  GEN-04" in result.output and "fix: update ComfyUI" in result.output
    assert "ok    INFRA-01  ComfyUI reachable" in result.output
    assert result.output.rstrip().splitlines()[-1].endswith("fail")
    as_json = ctl(daemon, "doctor", "--json")
    assert as_json.exit_code == 9
    assert json.loads(as_json.output)["ok"] is False


def test_cli_doctor_without_a_daemon_checks_from_the_shell(tmp_path: Path) -> None:
    (tmp_path / "none.toml").write_text("")
    inherited = {k: None for k in os.environ if k.startswith(("PLASMA_", "COMFYUI_", "KOHYA_"))}
    env = {**inherited, "PLASMA_CONFIG": str(tmp_path / "none.toml"),
           "PLASMA_STATE_DIR": str(tmp_path / "state"), "COMFYUI_URL": "http://127.0.0.1:9"}
    result = run_cli(["--socket", str(tmp_path / "no.sock"), "doctor"], env=env)  # type: ignore[arg-type]
    assert result.exit_code == 9, result.output
    assert "plasmad is not running" in result.output  # said on stderr, and as a warn line
    assert "warn  INFRA-01  plasmad running" in result.output
    assert "fail  INFRA-01  ComfyUI reachable" in result.output
    assert "COMFYUI_DIR is not set" in result.output


# --- benchmark ----------------------------------------------------------------------------------------


def bench_events(a: Api) -> list[str]:
    return [json.loads(line)["event"] for line in (a.cfg.state_dir / "bench.jsonl").read_text().splitlines()]


async def bench_result(a: Api, bench_id: str) -> dict[str, Any]:
    async def recorded() -> dict[str, Any] | None:
        resp = await a.client.get("/bench", params={"id": bench_id})
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        return dict(body) if body["status"] != "running" else None

    return dict(await eventually(recorded, f"benchmark {bench_id}"))


async def test_bench_runs_the_bar_through_the_normal_queue(api: Api) -> None:
    resp = await api.post("/bench", {})
    assert resp.status == 202, await resp.text()
    started = await resp.json()
    assert started["barApplies"] is True and started["note"] is None
    assert (started["width"], started["height"], started["steps"]) == (512, 512, 20)
    job = started["job"]
    assert job["kind"] == "generate" and job["request"]["sampler"] == "euler_ancestral"
    assert "loraId" not in job["request"] and job["request"]["checkpoint"] == CHECKPOINT_SD15

    result = await bench_result(api, started["id"])
    assert result["status"] == "succeeded" and result["passed"] is True
    assert isinstance(result["secondsPerImage"], float) and result["secondsPerImage"] < 120
    assert result["device"] == {"name": "cpu", "type": "cpu"}
    assert result["versions"]["comfyui"] == "0.3.75-fake" and result["versions"]["plasmad"]
    assert result["unetDtype"] == "fp32"  # PLASMA_UNET_DTYPE=auto, on the FAKE ComfyUI's cpu
    # The job itself ran on the base template, as any generation would.
    finished = await api.job(job["id"])
    assert finished["result"]["template"] == "txt2img-base"
    assert finished["result"]["timing"]["steps"] == 2  # the FAKE reports two sampler steps

    health = await (await api.client.get("/health")).json()
    assert health["bench"]["id"] == started["id"] and health["bench"]["passed"] is True
    listing = await (await api.client.get("/bench")).json()
    assert listing["last"]["id"] == started["id"] and listing["running"] == []
    assert bench_events(api) == ["started", "result"]


async def test_bench_quick_values_are_not_judged(api: Api) -> None:
    started = await rpc(api.stack.service, "bench", {"resolution": {"width": 64, "height": 64}, "steps": 4})
    body = started["result"]
    assert body["barApplies"] is False
    assert "defined for 512x512, 20 steps" in body["note"] and "64x64, 4 steps" in body["note"]
    result = await bench_result(api, body["id"])
    assert result["status"] == "succeeded" and result["passed"] is None
    assert result["secondsPerImage"] is not None


async def test_bench_that_fails_in_comfyui_does_not_pass(api: Api) -> None:
    api.fake.scenario = "error"
    started = await (await api.post("/bench", {})).json()
    result = await bench_result(api, started["id"])
    assert result["status"] == "failed" and result["passed"] is False
    assert "boom" in result["error"] and result["secondsPerImage"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"resolution": {"width": 1024, "height": 512}}, "resolution.width"),
        ({"resolution": {"width": 500, "height": 512}}, "resolution.width"),
        ({"sampler": "euler"}, "sampler"),  # the bar's sampler is not a choice
        ({"checkpoint": "nope.safetensors"}, "checkpoint"),
    ],
)
async def test_bench_refuses_bad_input(api: Api, body: dict[str, Any], field: str) -> None:
    await expect_error(await api.post("/bench", body), 400, field)


async def test_bench_unknown_id_is_404(api: Api) -> None:
    await expect_error(await api.client.get("/bench", params={"id": "b_nope"}), 404)
    await expect_error(await api.client.get("/bench", params={"limit": "0"}), 400, "limit")


async def test_a_bench_interrupted_by_a_stop_is_recorded_at_the_next_start(open_api: OpenApi) -> None:
    a = await open_api(start_worker=False)
    started = await (await a.post("/bench", {"resolution": {"width": 64, "height": 64}})).json()
    await a.stack.service.benchmarks.close()  # the daemon stops before the job ran
    again = Bench(a.stack.core)  # the next start
    await again.load()
    a.stack.service.benchmarks = again
    a.stack.queue.start()
    result = await bench_result(a, started["id"])
    assert result["status"] == "succeeded"
    assert bench_events(a) == ["started", "result"]
    await again.close()


def test_cli_bench_prints_the_figures(daemon: DaemonThread) -> None:
    result = ctl(daemon, "bench", "--width", "64", "--height", "64", "--steps", "4")
    assert result.exit_code == 0, result.output
    assert "seconds per image:" in result.output and "iterations per second:" in result.output
    assert "not judged: the 2-minute bar is defined for 512x512, 20 steps" in result.output
    full = ctl(daemon, "bench")
    assert full.exit_code == 0, full.output
    assert "INFRA-04 bar:           PASS" in full.output
    history = ctl(daemon, "bench", "--history")
    assert history.exit_code == 0 and history.output.count("b_") == 2 and "pass" in history.output


def test_cli_bench_exits_9_when_the_bar_is_missed(daemon: DaemonThread,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_module, "BAR_SECONDS", 0.0)  # nothing is that fast
    result = ctl(daemon, "bench", "--json")
    assert result.exit_code == 9, result.output
    assert json.loads(result.output)["passed"] is False


async def test_step_timer_times_the_sampler_not_the_preprocessor() -> None:
    seen: list[tuple[int, int]] = []

    async def report(step: int, total: int) -> None:
        seen.append((step, total))

    timer = StepTimer(report)
    await timer.report(1, 2)  # a preprocessor's own progress
    await timer.report(2, 2)
    for step in range(1, 6):
        await timer.report(step, 5)
        await asyncio.sleep(0.02)
    timer.stop()
    summary = timer.summary()
    assert summary["steps"] == 5 and seen[-1] == (5, 5)
    assert 10 < summary["itPerSec"] < 60  # 4 steps in ~0.08 s
    assert summary["seconds"] >= 0.08


# --- logs -----------------------------------------------------------------------------------------------


@pytest.fixture
def job_log_handler(tmp_path: Path) -> Iterator[Path]:
    """The per-job file handler on the root logger, as logging_setup wires it (minus the thread)."""
    logs = tmp_path / "state" / "logs"
    handler = JobFileHandler(logs)
    handler.addFilter(JobTagFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield logs
    root.removeHandler(handler)
    root.setLevel(old_level)


async def test_a_jobs_log_tells_what_happened_to_it(api: Api, job_log_handler: Path) -> None:
    job_id = await api.submit(resolution={"width": 64, "height": 64})
    await api.wait_job(job_id)
    resp = await api.client.get(f"/jobs/{job_id}/log")
    assert resp.status == 200, await resp.text()
    log = await resp.json()
    assert log["source"] == "job" and log["job"] == job_id and log["exists"] is True
    text = "\n".join(log["lines"])
    seed = (await api.job(job_id))["seed"]
    # Which UNet precision it got, and why (PLASMA_UNET_DTYPE=auto, on the FAKE ComfyUI's cpu).
    assert f"job {job_id} queued (txt2img-base, seed {seed}, UNet fp32: auto: " in log["lines"][0]
    assert f"job {job_id} started (generate, attempt 1" in text
    assert "sending prompt" in text and "ComfyUI ran prompt" in text and "2 steps" in text
    assert f"job {job_id} succeeded" in text
    # Only this job's records: another job's log is its own.
    other = await api.submit(resolution={"width": 64, "height": 64})
    await api.wait_job(other)
    again = await (await api.client.get(f"/jobs/{job_id}/log")).json()
    assert again["lines"] == log["lines"]
    assert (job_log_handler / "jobs" / f"{other}.log").exists()


async def test_a_queued_job_has_no_log_yet(open_api: OpenApi) -> None:
    a = await open_api(start_worker=False)
    job_id = await a.submit()
    log = await (await a.client.get(f"/jobs/{job_id}/log")).json()
    assert log["exists"] is False and log["lines"] == [] and "starts when the worker takes" in log["note"]


async def test_a_trainings_log_is_the_trainers_output(api: Api) -> None:
    folder = api.cfg.trainings_dir / "t_0123456789ab"
    folder.mkdir(parents=True)
    (folder / "train.log").write_text("steps:  50%| 3/6 [00:05<00:05, 1.83s/it]\nsaving checkpoint: x\n")
    await api.stack.store.add(Job(id="t_0123456789ab", kind=JobKind.TRAIN, status=JobStatus.RUNNING,
                                  request={}, result={"logFile": str(folder / "train.log")}))
    log = await rpc(api.stack.service, "logs", {"job": "t_0123456789ab", "lines": 1})
    assert log["result"]["source"] == "training" and log["result"]["lines"] == ["saving checkpoint: x"]


async def test_the_daemons_and_comfyuis_logs(api: Api) -> None:
    logs = api.cfg.logs_dir
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "plasmad.log").write_text("".join(f"line {i}\n" for i in range(300)))
    (logs / "comfyui.log").write_text("Starting server\nTo see the GUI go to: http://127.0.0.1:8188\n")
    daemon_log = await (await api.client.get("/logs", params={"lines": "3"})).json()
    assert daemon_log["source"] == "daemon" and daemon_log["lines"] == ["line 297", "line 298", "line 299"]
    comfy = await (await api.client.get("/logs", params={"job": "comfyui"})).json()
    assert comfy["source"] == "comfyui" and comfy["lines"][0] == "Starting server"


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/logs", {"lines": "-1"}, 400, "lines"),
        ("/logs", {"lines": "many"}, 400, "lines"),
        ("/logs", {"offset": "-5"}, 400, "offset"),
        ("/logs", {"job": "../../etc/passwd"}, 400, "job"),
        ("/logs", {"colour": "red"}, 400, "colour"),
        ("/jobs/j_nope/log", {}, 404, None),
    ],
)
async def test_logs_refuse_bad_input(api: Api, path: str, params: dict[str, str], status: int,
                                     field: str | None) -> None:
    await expect_error(await api.client.get(path, params=params), status, field)


def test_read_log_tails_and_follows(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    assert read_log(path, 10, None)["exists"] is False
    path.write_text("a\nb\nc\n")
    first = read_log(path, 2, None)
    assert first["lines"] == ["b", "c"] and first["offset"] == 6
    with path.open("a") as f:
        f.write("d\ne")  # "e" is a line still being written
    more = read_log(path, 2, first["offset"])
    assert more["lines"] == ["d"] and more["rotated"] is False
    with path.open("a") as f:
        f.write("\n")
    assert read_log(path, 2, more["offset"])["lines"] == ["e"]
    path.write_text("new\n")  # rotated: the file is shorter than what was read
    rotated = read_log(path, 2, 100)
    assert rotated["rotated"] is True and rotated["lines"] == ["new"]


def test_job_logs_are_bounded(tmp_path: Path) -> None:
    handler = JobFileHandler(tmp_path, max_files=3, max_bytes=300)
    handler.addFilter(JobTagFilter())
    logger = logging.getLogger("test.job_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for n in range(5):
            with job_context(f"j_{n}"):
                logger.warning("hello from job %d", n)
            time.sleep(0.01)  # distinct mtimes
        logger.warning("no job: not in any job's log")
        with job_context("j_4"):
            for _ in range(50):
                logger.warning("x" * 40)
    finally:
        logger.removeHandler(handler)
    names = sorted(p.name for p in (tmp_path / "jobs").iterdir())
    assert names == ["j_2.log", "j_3.log", "j_4.log"]  # the oldest were pruned
    big = (tmp_path / "jobs" / "j_4.log").read_text()
    assert len(big) <= 300 + 100 and big.rstrip().endswith("the daemon's log has the rest")  # + that note


def test_cli_logs_shows_and_follows_a_finished_job(daemon: DaemonThread, job_log_handler: Path) -> None:
    assert job_log_handler == daemon.stack.cfg.logs_dir  # both live in the test's tmp_path
    job = ctl(daemon, "submit", "-p", "spyke", "--width", "64", "--height", "64", "--wait", "--json")
    job_id = json.loads(job.output)["id"]
    shown = ctl(daemon, "logs", job_id, "-n", "2")
    assert shown.exit_code == 0 and len(shown.output.splitlines()) == 2
    assert shown.output.splitlines()[-1].endswith(f"job {job_id} succeeded")
    followed = ctl(daemon, "logs", job_id, "--follow")  # returns: the job is over
    assert followed.exit_code == 0 and "sending prompt" in followed.output
    missing = ctl(daemon, "logs")
    assert missing.exit_code == 0 and "does not exist yet" in missing.output
