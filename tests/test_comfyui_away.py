"""Unattended runs: the queue takes work while ComfyUI is away, and a job outlives ComfyUI going
away (issue 10, items 1, 2, 5).

In-process, over the FAKE ComfyUI (tests/fakes/fake_comfyui.py) where a real one will not do it
on demand (forget a prompt as after a restart, at a given moment), and over a FAKE ComfyUI that
accepts connections and never answers (what a SIGSTOPped one does, without stopping anything).
The same faults made real, against the real ComfyUI: tests/test_comfyui_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from plasmad.comfy import comfy_log
from plasmad.comfy.answers import ComfyAway
from plasmad.comfy.catalogue import BUILTIN_SAMPLERS, Catalogue
from plasmad.comfy.client import ComfyClient
from plasmad.comfy.precision import resolve_unet_dtype
from plasmad.generation.attempts import MAX_ATTEMPTS
from tests.fakes.fake_comfyui import SAMPLERS, FakeComfyUI
from tests.support.app import Api, OpenApi, eventually, expect_error, start_api
from tests.support.processes import free_port
from tests.support.training import NAME, make_dataset


class SilentServer:
    """A FAKE ComfyUI that accepts connections and never answers: what a stopped (SIGSTOP) ComfyUI
    looks like from outside (the kernel accepts, the process never reads)."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SilentServer:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._held.append(writer)

        self._server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._held:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def silent() -> AsyncIterator[SilentServer]:
    async with SilentServer() as server:
        yield server


async def _noop(step: int, total: int) -> None:
    pass


# --- the client tells away from slow, in seconds -------------------------------------------------------


async def test_a_stopped_comfyui_is_away_within_seconds_with_a_reason(silent: SilentServer) -> None:
    async with aiohttp.ClientSession() as session:
        client = ComfyClient(silent.url, session, history_poll_s=0.05, hang_s=1.0)
        started = time.monotonic()
        with pytest.raises(ComfyAway) as err:
            await client.run({"1": {}}, "p-1", _noop, timeout=60)
        # The WebSocket connect gives up in seconds (aiohttp's own default is 300 s).
        assert time.monotonic() - started < 10
        assert err.value.timed_out and "did not open its WebSocket: no answer within 5 s" in err.value.message

        started = time.monotonic()
        with pytest.raises(ComfyAway) as err:
            await client.wait("p-1", _noop, timeout=60)  # a prompt found again, in a ComfyUI gone silent
        assert time.monotonic() - started < 10
        assert err.value.hung and "hung: nothing heard for" in err.value.message
        assert "no answer within 1 s" in err.value.message  # never an empty reason


async def test_a_comfyui_that_forgot_the_prompt_is_away_not_waited_for_until_the_timeout() -> None:
    peer = FakeComfyUI()
    peer.scenario = "forget"
    server = TestServer(peer.app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            client = ComfyClient(str(server.make_url("")).rstrip("/"), session, history_poll_s=0.05)
            with pytest.raises(ComfyAway, match="no longer has prompt p-1"):
                await client.run({"1": {}}, "p-1", _noop, timeout=60)
    finally:
        await server.close()


# --- the catalogue: submit never needs ComfyUI ----------------------------------------------------------


async def test_submit_uses_the_last_known_catalogue_while_comfyui_is_away(tmp_path: Path) -> None:
    async with AsyncExitStack() as exits:
        seen = await start_api(exits, tmp_path / "a")
        kept = seen.cfg.state_dir / "comfyui.json"
        assert json.loads(kept.read_text())["catalogue"]["samplers"] == SAMPLERS  # what the FAKE offers
        # Another plasmad whose ComfyUI is down, with the catalogue the first one kept.
        (tmp_path / "b" / "state").mkdir(parents=True)
        shutil.copy(kept, tmp_path / "b" / "state" / "comfyui.json")
        away = await start_api(exits, tmp_path / "b", comfyui_url=f"http://127.0.0.1:{free_port()}")
        assert away.stack.core.monitor.up is False
        resp = await away.post("/jobs", {"prompt": "x", "sampler": "uni_pc"})  # 0.3.75 has it, this one not
        err = await expect_error(resp, 400, "sampler")
        assert err["details"]["choices"] == SAMPLERS
        resp = await away.post("/jobs", {"prompt": "x", "sampler": "dpmpp_2m"})
        assert resp.status == 202, await resp.text()
        # Never seen any ComfyUI: the samplers of the version we support.
        fresh = await start_api(exits, tmp_path / "c", comfyui_url=f"http://127.0.0.1:{free_port()}")
        assert fresh.stack.core.monitor.catalogue.samplers == BUILTIN_SAMPLERS
        resp = await fresh.post("/jobs", {"prompt": "x", "sampler": "uni_pc", "scheduler": "kl_optimal"})
        assert resp.status == 202, await resp.text()
        await expect_error(await fresh.post("/jobs", {"prompt": "x", "scheduler": "nope"}), 400, "scheduler")


async def test_a_node_installed_since_is_seen_before_a_refusal(api: Api, tmp_path: Path) -> None:
    # The catalogue was read at start, without the preprocessor; the artist installs it.
    assert api.stack.core.monitor.catalogue.has_node("OpenposePreprocessor") is False
    api.fake.nodes["OpenposePreprocessor"] = {"input": {"required": {"image": ["IMAGE"]}}}
    catalogue = await api.stack.core.monitor.refresh()
    assert catalogue.has_node("OpenposePreprocessor") is True
    assert Catalogue().has_node("OpenposePreprocessor") is None  # before any ComfyUI: unknown


# --- the queue holds work while ComfyUI is away ---------------------------------------------------------


async def test_a_job_queued_while_comfyui_is_down_runs_once_it_answers(open_api: OpenApi) -> None:
    port = free_port()
    api = await open_api(comfyui_url=f"http://127.0.0.1:{port}")  # nothing listens there yet
    job_id = await api.submit(chapter=1, page=1)
    queued = await api.job(job_id)
    assert queued["status"] == "queued"
    assert queued["waitingFor"].startswith(f"ComfyUI at http://127.0.0.1:{port}, not answering since ")
    # Never seen a ComfyUI: PLASMA_UNET_DTYPE=auto is decided when the job starts.
    assert queued["result"]["unetDtypePending"] is True
    await asyncio.sleep(0.5)
    assert (await api.job(job_id))["status"] == "queued"  # the worker did not take it

    peer = FakeComfyUI()  # ComfyUI starts, on the port plasmad asks
    server = TestServer(peer.app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        done = await eventually(lambda: _finished(api, job_id), "the job to run", timeout=20)
        assert done["status"] == "succeeded", done
        assert done["result"]["attempts"] == [] and len(peer.prompts) == 1
        # Decided once ComfyUI said what it runs on: a CPU, so fp32.
        assert done["result"]["unetDtype"] == "fp32" and done["result"]["unetDtypePending"] is False
        graph = peer.prompts[0]["prompt"]
        assert [n["inputs"]["dtype"] for n in graph.values() if n["class_type"] == "ModelComputeDtype"] == [
            "fp32"
        ]
        types = [e.type for e in api.stack.core.events.since(f"{api.stack.core.events.boot}-0")]
        assert "comfyui.down" in types and "comfyui.up" in types
        assert types.index("comfyui.up") > types.index("comfyui.down")
    finally:
        await server.close()


async def _finished(api: Api, job_id: str) -> dict[str, Any] | None:
    job = await api.job(job_id)
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


async def test_reg_images_and_a_comfyui_training_are_queued_while_comfyui_is_down(
    open_api: OpenApi, tmp_path: Path
) -> None:
    api = await open_api(comfyui_url=f"http://127.0.0.1:{free_port()}", trainer="comfyui")
    empty = tmp_path / "datasets" / "spyke"
    empty.mkdir(parents=True)
    body = {"datasetDir": str(empty), "count": 2, "allowSmall": True, "width": 64, "height": 64}
    resp = await api.post("/datasets/reg", body)
    assert resp.status == 202, await resp.text()
    queued = (await resp.json())["queued"]
    assert len(queued) == 2
    for job_id in queued:
        assert (await api.job(job_id))["waitingFor"].startswith("ComfyUI at ")
    dataset = make_dataset(tmp_path / "train")
    resp = await api.post("/loras/train", {"datasetDir": str(dataset), "outputName": NAME})
    assert resp.status == 202, await resp.text()
    training = await resp.json()
    assert training["trainer"] == "comfyui" and training["status"] == "queued"
    assert training["waitingFor"].startswith("ComfyUI at ")


async def test_a_queued_job_waiting_for_comfyui_can_be_cancelled(open_api: OpenApi) -> None:
    api = await open_api(comfyui_url=f"http://127.0.0.1:{free_port()}")
    job_id = await api.submit()
    resp = await api.post(f"/jobs/{job_id}/cancel")
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"


async def test_health_answers_within_a_second_while_comfyui_hangs(
    open_api: OpenApi, silent: SilentServer
) -> None:
    api = await open_api(comfyui_url=silent.url)
    for _ in range(3):
        started = time.monotonic()
        resp = await api.client.get("/health")
        assert time.monotonic() - started < 1.0
        assert resp.status == 200
    health = await resp.json()
    assert health["status"] == "ok" and health["comfyui"] is False


# --- a job outlives ComfyUI going away ------------------------------------------------------------------


async def test_a_prompt_comfyui_forgot_is_sent_again_and_the_attempt_recorded(api: Api) -> None:
    api.fake.scenario = "forget"  # as if ComfyUI restarted while it ran; the next prompt runs
    job_id = await api.submit(chapter=1, page=2)
    done = await api.wait_job(job_id)
    assert done["status"] == "succeeded", done
    [attempt] = done["result"]["attempts"]
    assert "no longer has prompt" in attempt["reason"] and attempt["promptId"]
    assert api.fake.prompts[0]["prompt_id"] == attempt["promptId"]
    assert len(api.fake.prompts) == 2
    raw = api.cfg.pipeline_dir / "output" / "ch-01" / "raw"  # type: ignore[operator]
    assert sorted(p.name for p in raw.iterdir()) == ["ch01_p002_v1.png", "ch01_p002_v1.workflow.json"]


async def test_after_three_attempts_the_job_fails_with_each_reason_and_interrupts(api: Api) -> None:
    api.fake.scenario, api.fake.forget_always = "forget", True
    job_id = await api.submit()
    failed = await api.wait_job(job_id)
    assert failed["status"] == "failed"
    error = failed["error"]
    assert error["name"] == "comfyui_unavailable" and error["message"]
    assert f"did not finish this job in {MAX_ATTEMPTS} attempts" in error["message"]
    assert error["message"].count("no longer has prompt") == MAX_ATTEMPTS
    assert len(error["details"]["attempts"]) == MAX_ATTEMPTS == len(api.fake.prompts)
    assert api.fake.prompts[-1]["prompt_id"] in api.fake.interrupted  # given up: stopped in ComfyUI


# --- pieces ---------------------------------------------------------------------------------------------


def test_unet_dtype_auto_follows_the_device() -> None:
    assert resolve_unet_dtype("auto", ["cpu"]).value == "fp32"
    assert resolve_unet_dtype("auto", ["mps"]).value == "fp16"
    assert resolve_unet_dtype("auto", ["cuda", "cpu"]).value == "fp16"
    unknown = resolve_unet_dtype("auto", [])
    assert unknown.value == "fp16" and not unknown.known and "not known yet" in unknown.why
    assert resolve_unet_dtype("fp16", ["cpu"]).value == "fp16"  # an explicit setting wins
    assert resolve_unet_dtype("fp32", ["mps"]).why == "PLASMA_UNET_DTYPE=fp32"


def test_the_lines_of_a_lora_that_did_not_load_are_counted(tmp_path: Path) -> None:
    log = tmp_path / "comfyui.log"
    log.write_text("an earlier job\nlora key not loaded: lora_unet_old\n")
    offset = comfy_log.size(log)
    with log.open("a") as f:
        f.write("got prompt\n")
        f.writelines(f"lora key not loaded: lora_unet_input_blocks_{i}_1\n" for i in range(5))
        f.write("ERROR lora diffusion_model.x.weight shape '[320, 320]' is invalid for input of size 2048\n")
        f.write("WARNING SHAPE MISMATCH diffusion_model.y.weight WEIGHT NOT MERGED\nPrompt executed\n")
    assert comfy_log.lora_problems(log, offset) == {"lora key not loaded": 5, "shape is invalid": 2}
    assert comfy_log.lora_problems(log, comfy_log.size(log)) == {}
    # Rotated since (ComfyUI restarted): the new file is read from its start.
    log.write_text("lora key not loaded: x\n")
    assert comfy_log.lora_problems(log, offset) == {"lora key not loaded": 1}


def test_plasmactl_shows_a_running_job_waiting_for_comfyui() -> None:
    from plasmactl.follow import job_line

    why = "ComfyUI at http://127.0.0.1:8188, not answering since 21:04 (attempt 2 of 3 waits for it)"
    running = {"id": "j_1", "status": "running", "progress": {"step": 3, "total": 20}, "waitingFor": why}
    assert job_line(running) == f"j_1 waiting for {why}"
    assert job_line({**running, "waitingFor": None}).startswith("j_1 [")
