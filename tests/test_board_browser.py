"""The review board in a real browser: Debian's chromium, driven by Playwright, against a real
plasmad process and the real demo ComfyUI (so these tests are marked `comfyui`).

What the artist does is what the tests do, by role and accessible name: open the board, see a
page's two versions, approve one (the log entry changes), re-roll one (a third version appears
without a reload), vary one, watch a job's progress move while it waits behind a training and then
runs, cancel a queued job, and see the training's loss curve, its samples grid and promote a
checkpoint. The trainer is the FAKE kohya (tests/fakes/fake_kohya.py, replaying a real run,
slowed to a second a step): ComfyUI's own trainer reports no loss, so it could draw no curve.

Each view's screenshot is written to the test's tmp dir; with BOARD_SCREENSHOT=<file> the pages
view is also copied there (scripts/board-screenshot.sh regenerates docs/board.png that way).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_kohya_python import FAKE_KOHYA, write_fake_python
from tests.support.processes import DEMO_LORA, ComfyServer, DaemonProcess, free_port, remove_from_comfyui
from tests.support.training import make_dataset

pytestmark = pytest.mark.comfyui

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container: chromium's sandbox needs user namespaces
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SMALL = {"resolution": {"width": 64, "height": 64}, "steps": 2}
WAIT_MS = 300_000  # the longest a generation or a training may take here, on a loaded 2-core CPU
BROWSER_MS = 30_000  # what the page itself may take to show what it was told


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def daemon(comfyui: ComfyServer, start_daemon: Any, tmp_path: Path) -> DaemonProcess:
    python = write_fake_python(tmp_path / "kohya")
    return start_daemon(  # type: ignore[no-any-return]
        COMFYUI_URL=comfyui.url,
        COMFYUI_DIR=str(comfyui.dir),
        KOHYA_PYTHON=str(python),
        KOHYA_SCRIPT=str(FAKE_KOHYA),
        FAKE_KOHYA_CASE="success",
        FAKE_KOHYA_SLOW="1",
        FAKE_KOHYA_STEP_DELAY="1",
        # The demo LoRA as every checkpoint, so that the real ComfyUI can draw their samples.
        FAKE_KOHYA_CHECKPOINT_FILE=str(comfyui.dir / "models" / "loras" / DEMO_LORA),
    )


@contextlib.contextmanager
def opened(browser: Any, url: str) -> Iterator[Any]:
    """The board open in a fresh browser page; a script error or a resource the page's policy
    refused fails the test."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(BROWSER_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))

    def console(m: Any) -> None:
        if m.type == "error" and "Content Security Policy" in m.text:
            problems.append(m.text)  # something the board tried to load or run was refused

    page.on("console", console)
    page.goto(url + "/")
    yield page
    context.close()
    assert problems == []


@pytest.fixture
def board(browser: Any, daemon: DaemonProcess) -> Iterator[Any]:
    with opened(browser, daemon.url) as page:
        yield page


@pytest.fixture
def comfy_cleanup(comfyui: ComfyServer) -> Iterator[list[Path]]:
    """Files a test puts in the shared demo ComfyUI (a promoted LoRA, sample copies): removed after."""
    paths: list[Path] = []
    yield paths
    remove_from_comfyui(comfyui, paths)


def generate(daemon: DaemonProcess, **body: Any) -> dict[str, Any]:
    body = {"prompt": "spyke_plasma_v1, standing, rooftop", **SMALL, **body}
    status, job = daemon.http("POST", "/jobs", body)
    assert status == 202, job
    return dict(job)


def log_entry(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    log = daemon.denv.pipeline_dir / "output" / "ch-01" / "generation-log.json"
    return next(e for e in json.loads(log.read_text()) if e["imageFile"] == f"{name}.png")


def shoot(page: Any, tmp_path: Path, view: str) -> Path:
    path = tmp_path / f"board-{view}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def values_of(page: Any, job_id: str) -> list[float]:
    """The progress bar of `job_id` as the page shows it now: [value, max], or [] if none."""
    return list(
        page.evaluate(
            """id => { const b = document.querySelector(`progress[data-progress-for="${id}"]`);
                       return b && b.hasAttribute("value") ? [b.value, b.max] : []; }""",
            job_id,
        )
    )


def test_pages_view_approve_reroll_vary(board: Any, daemon: DaemonProcess, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    for seed in (11, 12):
        job = daemon.wait_job(generate(daemon, chapter=1, page=1, loraId=DEMO_LORA, seed=seed)["id"])
        assert job["status"] == "succeeded", job
    page = board
    region = page.get_by_role("region", name="ch01_p001")
    v1 = region.get_by_role("article", name="ch01_p001_v1")
    v2 = region.get_by_role("article", name="ch01_p001_v2")
    expect(v2).to_be_visible()  # generated after the page was opened: it came with the events
    expect(region.get_by_role("article")).to_have_count(2)
    thumb = v2.get_by_role("img", name="ch01_p001_v2")
    expect(thumb).to_have_attribute("src", "/images/ch01_p001_v2/thumbnail?size=256")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
    expect(v2).to_contain_text("12")  # its seed
    expect(v2).to_contain_text(f"{DEMO_LORA} @ 1")
    shoot(page, tmp_path, "pages-two-versions")

    v2.get_by_role("button", name="Approve").click()
    expect(v2.get_by_text("Approved", exact=True)).to_be_visible()
    expect(v2.get_by_role("button", name="Unapprove ch01_p001_v2")).to_be_visible()
    assert log_entry(daemon, "ch01_p001_v2")["approved"] is True
    assert log_entry(daemon, "ch01_p001_v1")["approved"] is False

    v1.get_by_role("button", name="Re-roll").click()
    v3 = region.get_by_role("article", name="ch01_p001_v3")
    expect(v3).to_be_visible(timeout=WAIT_MS)  # no reload: the job's end brought it
    old, new = log_entry(daemon, "ch01_p001_v1"), log_entry(daemon, "ch01_p001_v3")
    assert new["seed"] != old["seed"]
    for key in ("promptHash", "loraId", "loraStrength", "steps", "sampler", "model", "width"):
        assert new[key] == old[key], key

    v3.get_by_text("Vary…").click()
    v3.get_by_label("LoRA strength").fill("0.5")
    v3.get_by_role("button", name="Vary ch01_p001_v3").click()
    v4 = region.get_by_role("article", name="ch01_p001_v4")
    expect(v4).to_be_visible(timeout=WAIT_MS)
    varied = log_entry(daemon, "ch01_p001_v4")
    assert (varied["seed"], varied["loraStrength"]) == (new["seed"], 0.5)

    shot = shoot(page, tmp_path, "pages")
    if target := os.environ.get("BOARD_SCREENSHOT"):
        shutil.copyfile(shot, target)

    # Reproduce queues the stored workflow again (plasmad.reproduce); the board says where it went.
    v1.get_by_role("button", name="Reproduce").click()
    page.wait_for_function(
        "() => /Reproduction of ch01_p001_v1 queued as r_/"
        ".test(document.getElementById('announce').textContent)"
    )
    workflow = v1.get_by_role("link", name="Workflow JSON")
    expect(workflow).to_have_attribute("href", "/images/ch01_p001_v1/workflow")
    graph = page.request.get(daemon.url + "/images/ch01_p001_v1/workflow").json()
    assert any(n["class_type"] == "KSampler" and n["inputs"]["seed"] == 11 for n in graph.values())
    expect(v1.get_by_role("link", name="Open image")).to_have_attribute("href", "/images/ch01_p001_v1")


def test_queue_and_trainings_views(
    board: Any, daemon: DaemonProcess, comfyui: ComfyServer, tmp_path: Path, comfy_cleanup: list[Path]
) -> None:
    from playwright.sync_api import expect

    page = board
    page.get_by_role("link", name="Queue").click()
    name = f"board-test-{secrets.token_hex(3)}"
    loras = comfyui.dir / "models" / "loras"
    comfy_cleanup.append(loras / f"{name}.safetensors")
    dataset = make_dataset(tmp_path / "data")
    body = {"datasetDir": str(dataset), "outputName": name, "steps": 6, "saveEverySteps": 2, "resolution": 64}
    status, training = daemon.http("POST", "/loras/train", body)
    assert status == 202, training
    tid = training["id"]
    comfy_cleanup.append(loras / "plasma-samples" / tid)

    # The training holds the GPU: a generation waits, and says for what.
    running = page.get_by_role("region", name="Running", exact=True)
    expect(running.get_by_role("article", name=re.compile(tid))).to_be_visible()
    waiting_job = generate(daemon, chapter=1, page=2, seed=3, steps=30)["id"]
    doomed = generate(daemon, seed=4)["id"]
    waiting = page.get_by_role("region", name="Waiting", exact=True)
    expect(waiting.get_by_role("article", name=re.compile(waiting_job))).to_contain_text(
        f"the GPU, held by train job {tid}"
    )
    waiting.get_by_role("button", name=f"Cancel {doomed}").click()
    ended = page.get_by_role("region", name="Recently ended", exact=True)
    expect(ended.get_by_role("article", name=re.compile(doomed))).to_contain_text("cancelled")
    page.wait_for_function(  # the training's own progress, moving in the queue
        f"() => parseInt(document.querySelector('[data-step-for=\"{tid}\"]')?.textContent) >= 2"
    )
    shoot(page, tmp_path, "queue")

    # Then the generation runs: its bar moves, step by step, pushed by the events.
    page.wait_for_function(
        f"""() => {{ const b = document.querySelector('progress[data-progress-for="{waiting_job}"]');
                   return b && b.value >= 1 && b.value < b.max; }}""",
        timeout=WAIT_MS,
    )
    first = values_of(page, waiting_job)
    page.wait_for_function(
        f"""() => {{ const b = document.querySelector('progress[data-progress-for="{waiting_job}"]');
                   return b && b.value > {first[0]}; }}""",
        timeout=WAIT_MS,
    )
    assert daemon.wait_job(waiting_job, WAIT_MS / 1000)["status"] == "succeeded"
    expect(ended.get_by_role("article", name=re.compile(waiting_job))).to_contain_text("succeeded")

    # The training's view: its loss curve, its samples grid, a checkpoint promoted.
    page.get_by_role("link", name="Trainings").click()
    article = page.get_by_role("article", name=re.compile(tid))
    curve = article.get_by_role("img", name=re.compile("Loss curve"))
    expect(curve).to_have_attribute("aria-label", f"Loss curve of {name}: 6 steps, last loss 1.05")
    expect(curve).to_have_attribute("data-points", "6")
    expect(article.get_by_role("row", name=re.compile("step 4"))).to_be_visible()
    status, _ = daemon.http(
        "POST", f"/loras/{tid}/samples", {"prompts": ["spyke_plasma_v1, full body"], "seed": 5, **SMALL}
    )
    assert status in (200, 202)
    grid = article.get_by_role("table", name=re.compile("Samples of"))
    expect(grid.get_by_role("img")).to_have_count(4, timeout=WAIT_MS)
    for img in grid.get_by_role("img").all():
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    article.get_by_role("button", name=f"Promote step 4 of {name}").click()
    expect(page.get_by_role("status")).to_contain_text(f"promoted as {name}.safetensors")
    assert (loras / f"{name}.safetensors").is_file()
    expect(page.get_by_role("region", name="LoRAs in ComfyUI")).to_contain_text(f"{name}.safetensors")
    shoot(page, tmp_path, "trainings")


def test_health_view(board: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = board
    page.get_by_role("link", name="Health").click()
    expect(page.get_by_role("link", name="Health")).to_have_attribute("aria-current", "page")
    health = page.get_by_role("region", name="Health")
    expect(health.get_by_text("ComfyUI is up")).to_be_visible()
    expect(health).to_contain_text("0.3.75")
    expect(health.get_by_role("region", name="Warnings")).to_contain_text("no mps device")
    expect(page.get_by_text("ComfyUI up", exact=True)).to_be_visible()  # the status line, on every view
    shoot(page, tmp_path, "health")


def test_comfyui_away_is_said_on_every_view(browser: Any, start_daemon: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    daemon = start_daemon(COMFYUI_URL=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with opened(browser, daemon.url) as page:
        expect(page.get_by_text("ComfyUI away", exact=True)).to_be_visible()  # the status line
        page.get_by_role("link", name="Queue").click()
        expect(page.get_by_text(re.compile("ComfyUI is away .*generations cannot run"))).to_be_visible()
        page.get_by_role("link", name="Health").click()
        expect(page.get_by_role("region", name="Health").get_by_text("ComfyUI is away")).to_be_visible()
        page.get_by_role("link", name="Trainings").click()  # needs COMFYUI_DIR: says so, no crash
        expect(page.get_by_role("alert")).to_contain_text("COMFYUI_DIR")
        page.get_by_role("link", name="Health").click()
        shoot(page, tmp_path, "health-comfyui-away")
