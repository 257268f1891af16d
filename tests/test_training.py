"""LoRA training through plasmad: the API rules (400, 409, the dataset gate), the outcomes end to end
through the queue, the GPU lock, cancel, stop and restart, samples and promote.

The trainer is the FAKE kohya (tests/fakes/fake_kohya.py, replaying real captured runs) launched
through a FAKE kohya python (tests/fakes/fake_kohya_python.py) that answers the preflight probe and
stands in for `accelerate launch`: plasmad runs its real kohya path, argv and process group
included, with no test hook. ComfyUI is the FAKE peer (it counts POST /free); models are FAKE
safetensors headers. The app, store, queue, lock and handlers are the real ones, in-process; the
restart test runs real plasmad processes and kills one with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from plasmad.api.http import create_app
from plasmad.api.service import Service, build_service
from plasmad.comfy.client import ComfyClient
from plasmad.comfy.templates import TemplateSet
from plasmad.core.config import Config
from plasmad.core.errors import ErrorCode
from plasmad.core.gpu_lock import GpuLock
from plasmad.core.job_queue import JobQueue
from plasmad.core.states import JobKind
from plasmad.core.store import JobStore
from plasmad.training.backend import TrainSpec
from plasmad.training.kohya.backend import KohyaTrainer
from plasmad.training.loss_log import LossLog, read_loss
from tests.fakes.fake_comfyui import FakeComfyUI
from tests.fakes.fake_kohya_python import FAKE_KOHYA, probe_answer, write_fake_python
from tests.support.app import FINISHED, eventually, expect_error, make_config, release_fake, rpc
from tests.support.modelfiles import CHECKPOINT_SD15, SD15_LORA, make_models_dir, write_safetensors
from tests.support.processes import DaemonEnv, DaemonProcess
from tests.support.sse import sse_events
from tests.support.training import NAME, STEP_FILES, TRIGGER, make_dataset


class ListingFake(FakeComfyUI):
    """The FAKE ComfyUI, also listing a loras folder as LoraLoader's choices (as ComfyUI does)."""

    def __init__(self, loras: Path) -> None:
        super().__init__()
        self.loras = loras

    async def object_info(self, request: web.Request) -> web.Response:
        if request.match_info["cls"] == "LoraLoader":
            names = sorted(p.relative_to(self.loras).as_posix() for p in self.loras.rglob("*.safetensors"))
            return web.json_response({"LoraLoader": {"input": {"required": {"lora_name": [names]}}}})
        return await super().object_info(request)


@dataclass
class Rig:
    client: TestClient[Any, Any]
    cfg: Config
    service: Service
    queue: JobQueue
    store: JobStore
    gpu: GpuLock
    fake: ListingFake
    dataset: Path

    async def post(self, path: str, body: Any = None) -> aiohttp.ClientResponse:
        return await self.client.post(path, json=body if body is not None else {})

    async def train(self, **body: Any) -> dict[str, Any]:
        resp = await self.post("/loras/train", {"datasetDir": str(self.dataset), "outputName": NAME, **body})
        assert resp.status == 202, await resp.text()
        return dict(await resp.json())

    async def status(self, training_id: str) -> dict[str, Any]:
        resp = await self.client.get(f"/loras/{training_id}/status")
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())

    async def wait(
        self, training_id: str, check: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 20.0
    ) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            t = await self.status(training_id)
            return t if (check(t) if check else t["status"] in FINISHED) else None

        return dict(await eventually(reached, f"training {training_id}", timeout))


OpenRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def open_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OpenRig]:
    monkeypatch.setenv("FAKE_KOHYA_DELAY", "0.001")
    monkeypatch.setenv("FAKE_KOHYA_SIGNAL_LOG", str(tmp_path / "signals.log"))
    monkeypatch.setenv("FAKE_PYTHON_ARGV_LOG", str(tmp_path / "launch.json"))
    python = write_fake_python(tmp_path)
    dataset = make_dataset(tmp_path)
    async with AsyncExitStack() as exits:

        async def open_(start_worker: bool = True, **overrides: Any) -> Rig:
            make_models_dir(tmp_path / "ComfyUI")
            peer = ListingFake(tmp_path / "ComfyUI" / "models" / "loras")
            server = TestServer(peer.app, host="127.0.0.1")
            await server.start_server()
            exits.push_async_callback(server.close)
            exits.callback(release_fake, peer)
            settings: dict[str, Any] = {
                "kohya_python": python,
                "kohya_script": FAKE_KOHYA,
                "trainer": "kohya",
            }
            settings.update(overrides)
            cfg = make_config(tmp_path, str(server.make_url("")).rstrip("/"), **settings)
            store = JobStore(cfg.db_path)
            await store.open()
            exits.push_async_callback(store.close)
            session = aiohttp.ClientSession()
            exits.push_async_callback(session.close)
            comfy = ComfyClient(cfg.comfyui_url, session, cfg.history_poll_s)
            service = build_service(cfg, store, comfy, TemplateSet(cfg.templates_dir))
            queue, gpu = service.core.queue, service.core.gpu
            await queue.recover()
            if start_worker:
                queue.start()
            exits.push_async_callback(queue.stop, 0.5)
            client: TestClient[Any, Any] = TestClient(TestServer(create_app(service), host="127.0.0.1"))
            await client.start_server()
            exits.push_async_callback(client.close)
            return Rig(client, cfg, service, queue, store, gpu, peer, dataset)

        yield open_


@pytest.fixture
async def rig(open_rig: OpenRig) -> Rig:
    return await open_rig()


# --- the API's rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["batch_size", "batchSize"])
async def test_batch_size_2_is_a_400(rig: Rig, spelling: str) -> None:
    # The milestone's acceptance criterion 5: POST /loras/train with batch_size=2 returns HTTP 400.
    resp = await rig.post("/loras/train", {"datasetDir": str(rig.dataset), "outputName": NAME, spelling: 2})
    error = await expect_error(resp, 400, "batch_size")
    assert "batch size 1 is the only safe value" in error["message"]
    answer = await rpc(
        rig.service, "train", {"datasetDir": str(rig.dataset), "outputName": NAME, "batch_size": 2}
    )
    assert (
        answer["error"]["code"] == ErrorCode.INVALID_INPUT
        and answer["error"]["data"]["field"] == "batch_size"
    )
    assert await rig.store.recent(kind=JobKind.TRAIN) == []


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"resolution": 768}, "resolution", "over the training limit of 512"),
        ({"resolution": 500}, "resolution", "multiple of 8"),
        ({"outputName": "../escape"}, "outputName", "letters, digits"),
        ({"outputName": "spyke.safetensors"}, "outputName", "without .safetensors"),
        ({"datasetDir": "relative/spyke"}, "datasetDir", "absolute path"),
        ({"steps": 0}, "steps", "greater than or equal to 1"),
        ({"learningRate": 2}, "learningRate", "less than or equal to 1"),
        ({"unknown": 1}, "unknown", "unknown field"),
    ],
)
async def test_bad_requests_name_the_field(rig: Rig, body: dict[str, Any], field: str, words: str) -> None:
    resp = await rig.post("/loras/train", {"datasetDir": str(rig.dataset), "outputName": NAME, **body})
    error = await expect_error(resp, 400, field)
    assert words in error["message"]


async def test_the_dataset_gate_refuses_with_every_reason(rig: Rig, tmp_path: Path) -> None:
    small = make_dataset(tmp_path / "small", originals=3)
    (small / f"10_{TRIGGER}" / "img01.txt").write_text("full body, standing, white background")
    resp = await rig.post("/loras/train", {"datasetDir": str(small), "outputName": NAME})
    error = await expect_error(resp, 400, "datasetDir")
    reasons = [p["reason"] for p in error["details"]["problems"]]
    assert any("3 original images, need at least 15" in r for r in reasons), reasons
    assert any("does not start with the trigger word" in r for r in reasons), reasons


async def test_a_second_training_is_a_409_while_one_is_queued(open_rig: OpenRig) -> None:
    rig = await open_rig(start_worker=False)
    first = await rig.train(steps=6, saveEverySteps=2)
    assert first["status"] == "queued" and first["id"].startswith("t_")
    assert first["trainer"] == "kohya" and first["total"] == 6
    resp = await rig.post("/loras/train", {"datasetDir": str(rig.dataset), "outputName": "other"})
    error = await expect_error(resp, 409)
    assert first["id"] in error["message"] and error["details"]["training"] == first["id"]
    answer = await rpc(rig.service, "train", {"datasetDir": str(rig.dataset), "outputName": "other"})
    assert answer["error"]["code"] == ErrorCode.CONFLICT
    # Once it is cancelled, a new one is accepted.
    resp = await rig.post(f"/loras/{first['id']}/cancel")
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    await rig.train(outputName="other")


async def test_preflight_refusal_and_warnings(open_rig: OpenRig, tmp_path: Path) -> None:
    # A venv without torch is refused at submission (503, not after hours in the queue).
    broken = write_fake_python(
        tmp_path / "broken", {**probe_answer(), "torch": None, "torch_error": "no torch"}
    )
    rig = await open_rig(start_worker=False, kohya_python=broken)
    resp = await rig.post("/loras/train", {"datasetDir": str(rig.dataset), "outputName": NAME})
    error = await expect_error(resp, 503)
    assert error["name"] == "not_configured" and "torch cannot be imported" in error["message"]


async def test_a_cpu_only_kohya_starts_with_a_loud_warning(open_rig: OpenRig, tmp_path: Path) -> None:
    cpu = write_fake_python(tmp_path / "cpu", probe_answer(device="cpu"))
    rig = await open_rig(start_worker=False, kohya_python=cpu)
    t = await rig.train()
    assert any("NO GPU" in w for w in t["warnings"]), t["warnings"]
    status = await rig.status(t["id"])
    assert status["warnings"] == t["warnings"]


# --- outcomes, end to end through the queue -------------------------------------------------------------


async def test_success_end_to_end(rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_CASE", "success")
    t = await rig.train(steps=6, saveEverySteps=2, resolution=64)
    done = await rig.wait(t["id"])
    assert done["status"] == "succeeded", done
    assert done["outcome"] == "succeeded" and (done["step"], done["total"]) == (6, 6)
    assert [c["file"] for c in done["checkpoints"]] == [*STEP_FILES, f"{NAME}.safetensors"]
    assert [c["step"] for c in done["checkpoints"]] == [2, 4, 6, None]
    assert all(c["complete"] for c in done["checkpoints"])
    assert done["loss"] is not None and done["secPerStep"] is not None
    assert done["etaSeconds"] is None and done["reason"] == "kohya wrote the final LoRA"
    assert await asyncio.to_thread(Path(done["logFile"]).is_file) and done["logTail"], done
    assert Path(done["outputDir"]) == rig.cfg.trainings_dir / t["id"] / "output"
    assert rig.fake.freed == 1  # ComfyUI was asked to unload its models first
    # The launch: accelerate, kohya's parameters, fp16 chosen by the preflight (an Apple GPU).
    launch = json.loads((tmp_path / "launch.json").read_text())
    assert launch[:2] == ["-m", "accelerate.commands.launch"]
    for flag, value in (
        ("--mixed_precision", "fp16"),
        ("--train_batch_size", "1"),
        ("--optimizer_type", "AdamW"),
        ("--network_dim", "32"),
        ("--network_alpha", "16"),
        ("--resolution", "64,64"),
        ("--save_every_n_steps", "2"),
        ("--output_name", NAME),
    ):
        assert launch[launch.index(flag) + 1] == value, flag
    assert launch[launch.index("--pretrained_model_name_or_path") + 1].endswith(CHECKPOINT_SD15)
    # The job view (GET /jobs/:id) sees the same job, and the list shows it.
    resp = await rig.client.get(f"/jobs/{t['id']}")
    assert (await resp.json())["kind"] == "train"
    listing = await (await rig.client.get("/loras")).json()
    assert [x["id"] for x in listing["trainings"]] == [t["id"]]
    assert {x["name"] for x in listing["loras"]} >= {"spyke_sd15.safetensors"}


async def test_progress_and_checkpoints_are_live_events(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_CASE", "success")
    async with rig.client.get("/events") as resp:
        stream = sse_events(resp)
        t = await rig.train(steps=6, saveEverySteps=2, resolution=64)
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            async for event in stream:
                if t["id"] in (event.get("job"), event.get("training")):
                    seen.append(event)
                    if event["type"] == "job.succeeded":
                        break
    progress = [e for e in seen if e["type"] == "training.progress"]
    assert [e["step"] for e in progress] == sorted({e["step"] for e in progress})  # each step once
    assert progress[-1]["step"] == progress[-1]["total"] == 6
    assert progress[-1]["loss"] is not None and progress[-1]["secPerStep"] is not None
    checkpoints = [e for e in seen if e["type"] == "training.checkpoint"]
    assert [(e["step"], e["file"]) for e in checkpoints] == [
        *zip([2, 4, 6], STEP_FILES, strict=True),
        (None, f"{NAME}.safetensors"),
    ]
    assert all(e["path"].endswith(e["file"]) for e in checkpoints)
    types = [e["type"] for e in seen]
    assert types[0] == "job.queued" and "job.progress" in types  # the queue's own events, kind train


async def test_a_resolution_between_buckets_trains_at_its_bucket_and_says_so(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KOHYA_CASE", "success")
    t = await rig.train(steps=6, saveEverySteps=2, resolution=200)
    assert any("resolution 200 is trained at 192x192" in w for w in t["warnings"]), t["warnings"]
    assert (await rig.wait(t["id"]))["status"] == "succeeded"
    launch = json.loads((tmp_path / "launch.json").read_text())
    assert launch[launch.index("--resolution") + 1] == "192,192" and "--enable_bucket" in launch


async def test_no_data_is_told_apart(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_CASE", "no_data")
    t = await rig.wait((await rig.train())["id"])
    assert t["status"] == "failed" and t["outcome"] == "no_data"
    assert "No data found" in t["reason"] and "<repeats>_<token>" in t["advice"]
    job = await (await rig.client.get(f"/jobs/{t['id']}")).json()
    assert (
        job["error"]["code"] == ErrorCode.TRAINING_FAILED and job["error"]["details"]["outcome"] == "no_data"
    )
    assert t["checkpoints"] == []


async def test_out_of_memory_keeps_the_checkpoints(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_CASE", "sigkill")
    t = await rig.wait((await rig.train(steps=6, saveEverySteps=2))["id"])
    assert t["status"] == "failed" and t["outcome"] == "out_of_memory", t
    assert "SIGKILL" in t["reason"] and "Quit other apps" in t["advice"]
    assert [c["file"] for c in t["checkpoints"]] == STEP_FILES[:2]
    job = await (await rig.client.get(f"/jobs/{t['id']}")).json()
    assert job["error"]["code"] == ErrorCode.OUT_OF_MEMORY
    assert job["error"]["details"]["checkpoints"] == STEP_FILES[:2]


async def test_cancel_stops_the_group_and_keeps_the_checkpoints(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KOHYA_SLOW", "1")
    monkeypatch.setenv("FAKE_KOHYA_STEP_DELAY", "0.4")
    t = await rig.train(steps=6, saveEverySteps=2)
    await rig.wait(t["id"], lambda s: s["status"] == "running" and len(s["checkpoints"]) >= 1)
    resp = await rig.post(f"/loras/{t['id']}/cancel")
    assert resp.status == 200
    done = await rig.wait(t["id"])
    assert done["status"] == "cancelled" and done["outcome"] == "cancelled", done
    assert done["checkpoints"] and done["checkpoints"][0]["file"] == STEP_FILES[0]
    assert "main" in (tmp_path / "signals.log").read_text()  # SIGTERM reached the trainer's group
    assert "SIGTERM" in (tmp_path / "signals.log").read_text()


async def test_a_generation_waits_for_the_training_then_runs(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KOHYA_SLOW", "1")
    monkeypatch.setenv("FAKE_KOHYA_STEP_DELAY", "0.25")
    t = await rig.train(steps=6, saveEverySteps=2)
    await rig.wait(t["id"], lambda s: s["status"] == "running")
    resp = await rig.post(
        "/jobs",
        {"prompt": "spyke_plasma_v1, standing", "resolution": {"width": 64, "height": 64}, "steps": 2},
    )
    assert resp.status == 202
    job_id = (await resp.json())["id"]
    for _ in range(5):  # while the training holds the GPU, the generation only waits
        job = await (await rig.client.get(f"/jobs/{job_id}")).json()
        assert job["status"] == "queued" and f"train job {t['id']}" in job["waitingFor"], job
        assert rig.fake.prompts == []  # nothing reached ComfyUI
        await asyncio.sleep(0.1)
    health = await (await rig.client.get("/health")).json()
    assert health["gpu"]["heldBy"] == f"train job {t['id']}"
    assert (await rig.wait(t["id"]))["status"] == "succeeded"
    job = await eventually(
        lambda: _finished_job(rig, job_id), f"job {job_id} to finish after the training", 10
    )
    assert job["status"] == "succeeded" and len(rig.fake.prompts) == 1


async def _finished_job(rig: Rig, job_id: str) -> dict[str, Any] | None:
    job = dict(await (await rig.client.get(f"/jobs/{job_id}")).json())
    return job if job["status"] in FINISHED else None


async def test_an_orderly_stop_mid_training_ends_it_interrupted(
    open_rig: OpenRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KOHYA_SLOW", "1")
    monkeypatch.setenv("FAKE_KOHYA_STEP_DELAY", "0.4")
    rig = await open_rig()
    t = await rig.train(steps=6, saveEverySteps=2)
    await rig.wait(t["id"], lambda s: len(s["checkpoints"]) >= 1)
    await rig.queue.stop(0.1)  # what SIGTERM does: a training cannot be parked for later
    job = await rig.store.get(t["id"])
    assert job is not None and job.status.value == "interrupted"
    assert job.result is not None and job.result["outcome"] == "interrupted"
    assert "checkpoint" in job.result["reason"] and "kept" in job.result["reason"]
    assert job.result["checkpoints"][0]["file"] == STEP_FILES[0]


async def test_abandon_stops_a_trainer_left_running(tmp_path: Path) -> None:
    # A daemon killed mid-training leaves kohya running in its own session: the restart stops it.
    cfg = make_config(tmp_path, kohya_python=Path(sys.executable), kohya_script=FAKE_KOHYA)
    output = tmp_path / "state" / "trainings" / "t_0123456789ab" / "output"
    orphan = subprocess.Popen(  # noqa: ASYNC220 (an orphan made the way kohya is started: its own session)
        [sys.executable, "-c", "import time; time.sleep(60)", "--output_dir", str(output)],
        start_new_session=True,
    )
    try:
        spec = TrainSpec(
            "t_0123456789ab",
            NAME,
            tmp_path,
            tmp_path,
            None,
            "x",
            tmp_path / "x",
            6,
            2,
            64,
            32,
            16,
            1e-4,
            42,
            output,
            tmp_path / "train.log",
        )
        await KohyaTrainer(cfg).abandon(spec, {})
        assert orphan.wait(10) == -signal.SIGTERM
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


# --- samples and promote (LORA-02/03) ------------------------------------------------------------------


def _real_looking_loras(output: Path) -> None:
    """The FAKE trainer writes empty safetensors; make them FAKE SD 1.5 LoRA headers, each distinct."""
    for path in output.glob("*.safetensors"):
        write_safetensors(path, SD15_LORA, {"ss_base_model_version": "sd_v1", "file": path.name})


async def test_samples_then_promote(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_CASE", "success")
    t = await rig.wait((await rig.train(steps=6, saveEverySteps=2))["id"])
    output = Path(t["outputDir"])
    _real_looking_loras(output)
    loras = rig.cfg.comfyui_dir / "models" / "loras"  # type: ignore[operator]
    before = {p.name: p.read_bytes() for p in loras.glob("*.safetensors")}

    body = {
        "prompts": ["spyke_plasma_v1, close-up", "spyke_plasma_v1, full body"],
        "seed": 7,
        "steps": 2,
        "resolution": {"width": 64, "height": 64},
        "includeBase": True,
    }
    resp = await rig.post(f"/loras/{t['id']}/samples", body)
    assert resp.status in (200, 202), await resp.text()
    answer = await resp.json()
    assert answer["total"] == 5 * 2 and [r["label"] for r in answer["rows"]] == [
        "base (no LoRA)",
        "step 2",
        "step 4",
        "step 6",
        "final (step 6)",
    ]

    async def done() -> dict[str, Any] | None:
        a = dict(await (await rig.client.get(f"/loras/{t['id']}/samples")).json())
        return a if a["state"] == "done" and a["sheet"] else None

    answer = await eventually(done, "the contact sheet", 20)
    assert answer["failed"] == []
    with Image.open(answer["sheet"]) as sheet:
        assert sheet.width > 2 * 256 and sheet.height > 5 * 256
    # Every row drew the same prompts with the same seeds; the checkpoints came from our own folder.
    graphs = [p["prompt"] for p in rig.fake.prompts]
    seeds = sorted({n["inputs"]["seed"] for g in graphs for n in g.values() if n["class_type"] == "KSampler"})
    assert seeds == [7, 8]
    used = sorted(
        {n["inputs"]["lora_name"] for g in graphs for n in g.values() if n["class_type"] == "LoraLoader"}
    )
    assert used == [f"plasma-samples/{t['id']}/{f}" for f in [*STEP_FILES, f"{NAME}.safetensors"]]
    # Asking again for the same set reuses it: nothing more is queued.
    again = await (await rig.post(f"/loras/{t['id']}/samples", body)).json()
    assert again["sheet"] == answer["sheet"] and len(rig.fake.prompts) == 10
    status = await rig.status(t["id"])
    assert status["samples"]["sheet"] == answer["sheet"]

    # Promote step 4 under the training's name; ComfyUI lists it.
    resp = await rig.post(f"/loras/{t['id']}/promote", {"step": 4})
    promoted = await resp.json()
    assert resp.status == 200, promoted
    assert promoted["loraId"] == f"{NAME}.safetensors" and promoted["listed"] is True
    assert (loras / f"{NAME}.safetensors").read_bytes() == (output / STEP_FILES[1]).read_bytes()
    # The same again is fine; another checkpoint under that name is refused, never replaced.
    again = await (await rig.post(f"/loras/{t['id']}/promote", {"step": 4})).json()
    assert again["alreadyThere"] is True
    resp = await rig.post(f"/loras/{t['id']}/promote", {"step": 2})
    await expect_error(resp, 409, "name")
    assert (loras / f"{NAME}.safetensors").read_bytes() == (output / STEP_FILES[1]).read_bytes()
    resp = await rig.post(f"/loras/{t['id']}/promote", {"name": "spyke_final"})
    assert (
        resp.status == 200
        and (loras / "spyke_final.safetensors").read_bytes() == (output / f"{NAME}.safetensors").read_bytes()
    )
    await expect_error(await rig.post(f"/loras/{t['id']}/promote", {"step": 3}), 400, "step")
    # The artist's own files were never touched.
    assert {p.name: p.read_bytes() for p in loras.glob("*.safetensors") if p.name in before} == before
    # And the promoted LoRA generates.
    resp = await rig.post(
        "/jobs",
        {
            "prompt": "x",
            "loraId": f"{NAME}.safetensors",
            "steps": 2,
            "resolution": {"width": 64, "height": 64},
        },
    )
    assert resp.status == 202


async def test_samples_need_a_finished_training(open_rig: OpenRig) -> None:
    rig = await open_rig(start_worker=False)
    t = await rig.train()
    await expect_error(await rig.post(f"/loras/{t['id']}/samples"), 409)
    await expect_error(await rig.client.get("/loras/t_nosuchthing0/status"), 404)


# --- a real plasmad, killed with SIGKILL mid-training ---------------------------------------------------


def test_a_restart_during_a_training_reports_it_interrupted_with_its_checkpoints(
    daemon_env: DaemonEnv, start_daemon: Any, tmp_path: Path
) -> None:
    make_models_dir(tmp_path / "ComfyUI")
    dataset = make_dataset(tmp_path / "data")
    env = {
        "COMFYUI_DIR": str(tmp_path / "ComfyUI"),
        "COMFYUI_URL": "http://127.0.0.1:9",  # no ComfyUI: kohya does not need it (POST /free just fails)
        "PLASMA_CHECKPOINT": CHECKPOINT_SD15,
        "KOHYA_PYTHON": str(write_fake_python(tmp_path)),
        "KOHYA_SCRIPT": str(FAKE_KOHYA),
        "FAKE_KOHYA_SLOW": "1",
        "FAKE_KOHYA_STEP_DELAY": "0.5",
    }
    d1: DaemonProcess = start_daemon(**env)
    status, t = d1.http(
        "POST",
        "/loras/train",
        {"datasetDir": str(dataset), "outputName": NAME, "steps": 6, "saveEverySteps": 2},
    )
    assert status == 202, t
    assert any(
        "did not free its memory" in w
        for w in d1.wait_for(f"/loras/{t['id']}/status", lambda s: len(s["checkpoints"]) >= 1)["warnings"]
    )
    d1.kill9()

    d2: DaemonProcess = start_daemon(**env)
    after = d2.wait_for(f"/loras/{t['id']}/status", lambda s: s["status"] != "running")
    assert after["status"] == "interrupted" and after["outcome"] == "interrupted", after
    assert after["checkpoints"] and after["checkpoints"][0]["file"] == STEP_FILES[0]
    assert "stopped during the training" in after["reason"] and "kept" in after["reason"]
    # No trainer of it is left running.
    ps = subprocess.run(
        ["ps", "-ww", "-A", "-o", "command="], capture_output=True, text=True, check=True
    ).stdout
    assert after["outputDir"] not in ps
    # A new training is accepted.
    status, again = d2.http("POST", "/loras/train", {"datasetDir": str(dataset), "outputName": "second"})
    assert status == 202, again


def test_plasmactl_train_commands(daemon_env: DaemonEnv, start_daemon: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from plasmactl.cli import cli
    from plasmactl.output import Exit

    make_models_dir(tmp_path / "ComfyUI")
    dataset = make_dataset(tmp_path / "data")
    d: DaemonProcess = start_daemon(
        COMFYUI_DIR=str(tmp_path / "ComfyUI"),
        COMFYUI_URL="http://127.0.0.1:9",
        PLASMA_CHECKPOINT=CHECKPOINT_SD15,
        KOHYA_PYTHON=str(write_fake_python(tmp_path)),
        KOHYA_SCRIPT=str(FAKE_KOHYA),
        FAKE_KOHYA_DELAY="0.001",
    )
    runner = CliRunner()

    def ctl(*args: str) -> Any:
        return runner.invoke(cli, ["--socket", str(d.denv.socket), *args])

    refused = ctl("train", str(dataset), "--name", NAME, "--batch-size", "2")
    assert refused.exit_code == Exit.USAGE and "batch size 1 is the only safe value" in refused.output
    started = ctl("train", str(dataset), "--name", NAME, "--steps", "6", "--save-every", "2")
    assert started.exit_code == 0, started.output
    training_id = started.stdout.strip().splitlines()[0]
    assert training_id.startswith("t_")
    waited = ctl("train-status", training_id, "--wait", "--json")
    assert waited.exit_code == 0, waited.output
    assert json.loads(waited.stdout)["status"] == "succeeded"
    _real_looking_loras(Path(json.loads(waited.stdout)["outputDir"]))  # the FAKE's files are all alike
    shown = ctl("train-status", training_id)
    assert "6/6" in shown.stdout and f"{NAME}-step00000004.safetensors" in shown.stdout
    listing = ctl("loras")
    assert (
        listing.exit_code == 0
        and training_id in listing.stdout
        and "spyke_sd15.safetensors" in listing.stdout
    )
    promoted = ctl("lora", "promote", training_id, "--step", "4", "--as", "spyke_v1_s4")
    assert promoted.exit_code == 0, promoted.output
    assert (tmp_path / "ComfyUI" / "models" / "loras" / "spyke_v1_s4.safetensors").is_file()
    assert "could not ask ComfyUI" in promoted.stderr  # no ComfyUI here: said, not hidden
    again = ctl("lora", "promote", training_id, "--step", "2", "--as", "spyke_v1_s4")
    assert again.exit_code == Exit.CONFLICT and "not replaced" in again.stderr
    late = ctl("train-cancel", training_id)
    assert late.exit_code == Exit.CONFLICT


# --- the ComfyUI trainer's graph and file format (no ComfyUI needed) -------------------------------------


def test_the_training_template_fills_and_fixes_the_hardware_rules() -> None:
    from plasmad.comfy.templates import load_template
    from plasmad.core.config import BUNDLED_TEMPLATES
    from plasmad.training.comfy_trainer.backend import TEMPLATE

    template = load_template(BUNDLED_TEMPLATES, TEMPLATE)
    graph = template.fill(
        {"steps": 3, "rank": 8, "existing_lora": "plasma-train/t_x/t_x_2_steps_.safetensors"}
    )
    classes = {n["class_type"]: n["inputs"] for n in graph.values()}
    assert set(classes) == {
        "CheckpointLoaderSimple",
        "LoadImageTextDataSetFromFolder",
        "MakeTrainingDataset",
        "TrainLoraNode",
        "SaveLoRA",
    }
    train = classes["TrainLoraNode"]
    # Fixed in the graph, not slots: batch size 1 (GEN-06) and AdamW (never an 8-bit optimizer).
    assert (train["batch_size"], train["grad_accumulation_steps"], train["optimizer"]) == (1, 1, "AdamW")
    assert (train["steps"], train["rank"], train["algorithm"]) == (3, 8, "LoRA")
    assert "batch_size" not in template.slots and "optimizer" not in template.slots


def test_chunks_follow_kohyas_saving_rule() -> None:
    from plasmad.training.comfy_trainer.backend import chunk_ends, saves_step_file

    assert chunk_ends(1000, 200) == [200, 400, 600, 800, 1000]
    assert chunk_ends(4, 2) == [2, 4] and chunk_ends(5, 2) == [2, 4, 5] and chunk_ends(4, 10) == [4]
    assert [saves_step_file(e, 5, 2) for e in (2, 4, 5)] == [True, True, False]
    assert saves_step_file(4, 4, 2) and not saves_step_file(4, 4, 4)  # kohya: 0 = no step files


def test_a_comfyui_lora_is_rewritten_in_kohyas_layout(tmp_path: Path) -> None:
    from plasmad.comfy import modelfiles
    from plasmad.training.comfy_trainer.convert import to_kohya

    # SaveLoRA's keys and shapes (as 0.3.75 writes them: conv LoRAs flattened), with real data bytes.
    def entry(dtype: str, shape: list[int], start: int) -> tuple[dict[str, Any], int]:
        n = 4
        for d in shape:
            n *= d
        return {"dtype": dtype, "shape": shape, "data_offsets": [start, start + n]}, start + n

    header: dict[str, Any] = {}
    offset = 0
    for key, shape in (
        ("diffusion_model.input_blocks.1.0.in_layers.2.lora_down.weight", [4, 320 * 9]),
        ("diffusion_model.input_blocks.1.0.in_layers.2.lora_up.weight", [320, 4]),
        ("diffusion_model.input_blocks.1.0.in_layers.2.alpha", []),
        ("diffusion_model.input_blocks.1.0.in_layers.2.diff_b", [320]),
        ("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.lora_down.weight", [4, 768]),
        ("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.lora_up.weight", [320, 4]),
    ):
        header[key], offset = entry("F32", shape, offset)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    data = bytes(range(256)) * (offset // 256) + bytes(offset % 256)
    src = tmp_path / "chunk_00001_.safetensors"
    src.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    shapes = {"input_blocks.1.0.in_layers.2": [320, 320, 3, 3]}

    dst = tmp_path / "out" / "spyke-step00000002.safetensors"
    to_kohya(src, dst, shapes, {"ss_network_dim": "4", "ss_base_model_version": "sd_v1"})
    tensors, meta = modelfiles.read_header(dst)
    assert tensors["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"]["shape"] == [4, 320, 3, 3]
    assert tensors["lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight"]["shape"] == [320, 4, 1, 1]
    assert tensors["lora_unet_input_blocks_1_0_in_layers_2.alpha"]["shape"] == []
    assert "lora_unet_input_blocks_1_0_in_layers_2.diff_b" in tensors
    assert meta["ss_network_dim"] == "4"
    assert (modelfiles.inspect(dst).role, modelfiles.inspect(dst).family) == ("lora", "sd15")
    # The tensors are the same bytes, at the same offsets after the new header.
    raw = dst.read_bytes()
    assert raw.endswith(data) and len(raw) == 8 + int.from_bytes(raw[:8], "little") + len(data)
    # A name is written once: never overwritten.
    with pytest.raises(Exception, match="not overwritten"):
        to_kohya(src, dst, shapes, {})


async def test_extra_args_that_touch_our_flags_are_a_configuration_error(open_rig: OpenRig) -> None:
    rig = await open_rig(start_worker=False, kohya_extra_args=("--train_batch_size", "4"))
    resp = await rig.post("/loras/train", {"datasetDir": str(rig.dataset), "outputName": NAME})
    error = await expect_error(resp, 503, "KOHYA_EXTRA_ARGS")
    assert "set by Plasma" in error["message"]


# --- the loss log (the review board's curve) -------------------------------------------------------------


async def test_the_loss_log_has_each_steps_last_value(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_CASE", "success")
    t = await rig.wait((await rig.train(steps=6, saveEverySteps=2))["id"])
    resp = await rig.client.get(f"/loras/{t['id']}/loss")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    # kohya's avr_loss per step, as its bar drew it last at that step (the captured run's values).
    losses = [1.21, 1.1, 1.08, 1.08, 1.07, 1.05]
    assert body == {"training": t["id"], "points": [{"step": n, "loss": v} for n, v in enumerate(losses, 1)]}
    assert body["points"][-1]["loss"] == t["loss"]
    log = Path(t["logFile"]).with_name("loss.jsonl")
    assert len(log.read_text().splitlines()) <= 2 * 6  # a step drawn twice has two lines at most
    later = await (await rig.client.get(f"/loras/{t['id']}/loss?after=4")).json()
    assert [p["step"] for p in later["points"]] == [5, 6]
    assert (await rpc(rig.service, "training_loss", {"id": t["id"], "after": 5}))["result"]["points"] == [
        {"step": 6, "loss": 1.05}
    ]
    await expect_error(await rig.client.get(f"/loras/{t['id']}/loss?after=-1"), 400, "after")
    await expect_error(await rig.client.get("/loras/t_000000000000/loss"), 404)


def test_the_loss_log_reader_skips_what_it_cannot_use(tmp_path: Path) -> None:
    log = tmp_path / "loss.jsonl"
    log.write_text(
        '{"step": 1, "loss": 0.9}\n{"step": 2, "loss": 0.8}\n{"step": 2, "loss": 0.7}\n'
        '{"step": 3, "loss": NaN}\nnot json\n{"step": "4", "loss": 1}\n{"step": 5, "lo'
    )
    assert read_loss(log) == [(1, 0.9), (2, 0.7)]
    assert read_loss(log, after=1) == [(2, 0.7)]
    assert read_loss(tmp_path / "none.jsonl") == []


async def test_the_loss_log_is_written_off_the_loop_in_order(tmp_path: Path) -> None:
    log = LossLog(tmp_path / "t" / "loss.jsonl")
    for step in range(1, 201):
        log.record(step, 1.0 / step)
        log.record(step, 1.0 / step)  # the same drawing twice: one line
    await log.close()
    assert read_loss(tmp_path / "t" / "loss.jsonl") == [(s, 1.0 / s) for s in range(1, 201)]
    assert len((tmp_path / "t" / "loss.jsonl").read_text().splitlines()) == 200
