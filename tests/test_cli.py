"""plasmactl against a real JSON-RPC server, in-process, over a FAKE ComfyUI.

The server is plasmad's own (`bind_socket` + `start_rpc_server` over the real Service, store and
queue), run in a background thread's event loop (tests/support/cli.py's DaemonThread; the `daemon`
fixture is tests/conftest.py's), so click's CliRunner can drive the CLI in the main thread exactly
as a terminal would, socket and all. One test runs the installed console script as a child process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plasmactl import follow
from plasmactl.context import Ctl
from plasmactl.output import Exit
from plasmad.generation import pipeline_files
from tests.fakes.fake_comfyui import SAMPLERS, FakeComfyUI
from tests.support.app import OpenApi, eventually, expect_error, rpc
from tests.support.cli import DaemonThread, ctl, run_cli

PLASMACTL = Path(sys.executable).parent / "plasmactl"


def submit(daemon: DaemonThread, *args: str) -> str:
    result = ctl(daemon, "submit", "-p", "Spyke on a rooftop", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


# --- no daemon, bad arguments ----------------------------------------------------------------------------


def test_no_daemon_exits_3_with_one_line() -> None:
    for args in (["--socket", "/nonexistent", "health"], ["--socket", "/nonexistent", "--json", "health"],
                 ["--socket", "/nonexistent", "jobs", "--json"]):
        result = run_cli(args)
        assert result.exit_code == int(Exit.NO_DAEMON) == 3
        [line] = result.stderr.splitlines()
        assert line.startswith("plasmactl: plasmad is not running") and "/nonexistent" in line
        if "--json" in args:  # scripts get the error as JSON on stdout, with the exit code
            error = json.loads(result.stdout)["error"]
            assert error == {"name": "no_daemon", "exit": 3, "message": line.removeprefix("plasmactl: ")}
        else:
            assert result.stdout == ""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path, for sockets (AF_UNIX paths are capped near 104 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="plc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_socket_from_the_environment_and_stale_sockets(short_dir: Path) -> None:
    stale = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:  # bound, never listened, closed: a dead daemon's file
        s.bind(str(stale))
    result = run_cli(["health"], env={"PLASMA_SOCKET": str(stale)})
    assert result.exit_code == 3 and str(stale) in result.stderr
    not_a_socket = short_dir / "file"
    not_a_socket.write_text("")
    result = run_cli(["--socket", str(not_a_socket), "health"])
    assert result.exit_code == 3 and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["submit"],  # no prompt
        ["submit", "-p", "x", "--steps", "many"],
        ["submit", "-p", "x", "--width", "1.5"],
        ["jobs", "--status", "bogus"],
        ["jobs", "--limit", "x"],
        ["wait"],
        ["status"],
        ["generate", "--page", "1"],  # no chapter
        ["no-such-command"],
        ["health", "--bogus"],
    ],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    result = run_cli(["--socket", "/nonexistent", *args])
    assert result.exit_code == int(Exit.USAGE) == 2, result.output
    assert "Usage" in result.stderr or "Error" in result.stderr


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["submit", "--json"], "prompt"),  # no prompt
        (["--json", "submit", "-p", "x", "--steps", "many"], "steps"),
        (["jobs", "--status", "bogus", "--json"], "status_filter"),
        (["--json", "no-such-command"], None),
        (["--json", "--bogus"], None),  # the group's own arguments
    ],
)
def test_bad_arguments_with_json_give_a_json_error(args: list[str], field: str | None) -> None:
    result = run_cli(["--socket", "/nonexistent", *args])
    assert result.exit_code == int(Exit.USAGE) == 2, result.output
    assert "Usage" in result.stderr or "Error" in result.stderr  # people still get click's text
    error = json.loads(result.stdout)["error"]
    assert (error["name"], error["exit"], error.get("field")) == ("usage", 2, field)
    assert error["message"] and "\n" not in error["message"]


def test_help_needs_no_daemon() -> None:
    result = run_cli(["--socket", "/nonexistent", "--help"])
    assert result.exit_code == 0 and "submit" in result.stdout and "generate" in result.stdout
    assert "Exit codes: 0 ok" in result.stdout


def test_the_command_line_imports_nothing_heavy() -> None:
    """`plasmactl --help` and a call without a daemon import click and plasmad's light core only:
    aiohttp, pydantic, Pillow and the daemon's features come with the commands that use them."""
    probe = (
        "import sys\n"
        "from plasmactl.cli import cli\n"
        "for args in (['--help'], ['--socket', '/nonexistent', 'jobs'], ['dataset', 'check', '--help']):\n"
        "    try:\n"
        "        cli(args, prog_name='plasmactl')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('aiohttp', 'pydantic', 'PIL', 'jsonrpcserver', 'asyncio', 'plasmad.operations',\n"
        "         'plasmad.dataset', 'plasmad.comfy', 'plasmad.training', 'plasmad.context')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.splitlines()[-1] == "[]", out.stdout + out.stderr


# --- against the daemon ----------------------------------------------------------------------------------


def test_health(daemon: DaemonThread) -> None:
    result = ctl(daemon, "health")
    assert result.exit_code == 0, result.output
    assert "ComfyUI:  ok 0.3.75-fake" in result.stdout and "GPU:      free" in result.stdout
    assert "mps:      no; fp32 VAE: yes" in result.stdout
    assert "UNet:     fp32 (auto: ComfyUI reports only cpu" in result.stdout
    assert "no mps device" in result.stderr  # warnings go to stderr
    for args in (("--json", "health"), ("health", "--json")):
        health = json.loads(ctl(daemon, *args).stdout)
        assert health["comfyui"] is True and health["mps"] is False


def test_submit_status_wait_and_jobs(daemon: DaemonThread) -> None:
    job_id = submit(daemon, "--seed", "11", "--width", "256", "--height", "384")
    assert job_id.startswith("j_") and "\n" not in job_id
    result = ctl(daemon, "wait", job_id)
    assert result.exit_code == 0, result.output
    image = daemon.stack.cfg.state_dir / "images" / f"{job_id}.png"
    assert result.stdout.strip() == str(image) and image.is_file()

    status = ctl(daemon, "status", job_id).stdout
    assert f"{job_id}  generate  succeeded" in status and "seed: 11" in status and str(image) in status
    job = json.loads(ctl(daemon, "status", job_id, "--json").stdout)
    assert job["request"]["resolution"] == {"width": 256, "height": 384}

    second = submit(daemon)
    ctl(daemon, "wait", second)
    table = ctl(daemon, "jobs").stdout.splitlines()
    assert table[0].split() == ["ID", "KIND", "STATUS", "PROGRESS", "CREATED", "OUTPUT"]
    assert [line.split()[0] for line in table[1:]] == [second, job_id]  # newest first
    listed = json.loads(ctl(daemon, "--json", "jobs", "--status", "succeeded", "--limit", "1").stdout)
    assert [j["id"] for j in listed] == [second]
    assert json.loads(ctl(daemon, "jobs", "--status", "failed", "--json").stdout) == []


def test_submit_wait_and_json_output(daemon: DaemonThread) -> None:
    queued = json.loads(ctl(daemon, "submit", "-p", "x", "--json").stdout)
    assert queued["status"] == "queued"
    result = ctl(daemon, "submit", "-p", "x", "--wait", "--json")
    assert result.exit_code == 0
    done = json.loads(result.stdout)
    assert done["status"] == "succeeded" and done["outputs"]


def test_generate_reads_the_page_prompt_file_and_approve(daemon: DaemonThread) -> None:
    prompt_file = pipeline_files.prompt_file(daemon.pipeline, 1, 1)
    prompt_file.parent.mkdir(parents=True)
    prompt_file.write_text("# the rooftop\nSpyke on a rooftop, night\nnegative: blurry\n")
    result = ctl(daemon, "generate", "-c", "1", "--page", "1", "--seed", "3")
    assert result.exit_code == 0, result.output
    image = pipeline_files.raw_dir(daemon.pipeline, 1) / "ch01_p001_v1.png"
    assert result.stdout.strip() == str(image) and image.is_file()
    [entry] = json.loads((image.parent.parent / pipeline_files.LOG_NAME).read_text())
    assert entry["promptFile"] == "prompts/ch-01/p001.txt" and entry["seed"] == 3
    assert entry["promptHash"] == pipeline_files.prompt_hash("Spyke on a rooftop, night", "blurry")

    result = ctl(daemon, "approve", "ch01_p001_v1")
    assert (result.exit_code, result.stdout.strip()) == (0, "ch01_p001_v1.png: approved=true")
    undone = json.loads(ctl(daemon, "approve", "ch01_p001_v1.png", "--undo", "--json").stdout)
    assert undone["approved"] is False and undone["jobId"] == entry["jobId"]
    assert ctl(daemon, "approve", "ch01_p001_v9").exit_code == Exit.NOT_FOUND
    assert ctl(daemon, "approve", "page-one").exit_code == Exit.USAGE
    assert ctl(daemon, "generate", "-c", "1", "--page", "2").exit_code == Exit.NOT_FOUND  # no prompt file


def test_refusals_list_the_valid_choices(daemon: DaemonThread) -> None:
    result = ctl(daemon, "submit", "-p", "x", "--sampler", "nope")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "plasmactl: sampler: 'nope' is not a ComfyUI sampler",
        f"  valid: {', '.join(SAMPLERS)}",
    ]
    error = json.loads(ctl(daemon, "submit", "-p", "x", "--sampler", "nope", "--json").stdout)["error"]
    assert error["details"] == {"choices": SAMPLERS} and (error["field"], error["exit"]) == ("sampler", 2)


def test_daemon_400_exits_2_naming_the_field(daemon: DaemonThread) -> None:
    result = ctl(daemon, "submit", "-p", "x", "--width", "1024")
    assert result.exit_code == int(Exit.USAGE) == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("plasmactl: resolution.width: 1024 is over the hardware limit")
    result = ctl(daemon, "submit", "-p", "x", "--checkpoint", "../x.safetensors", "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["field"] == "checkpoint"
    result = ctl(daemon, "submit", "-p", "x", "--sampler", "nope")
    assert result.exit_code == 2 and "sampler" in result.stderr
    assert ctl(daemon, "status", "j_nope").exit_code == Exit.NOT_FOUND


def test_failed_job_wait_exits_1(daemon: DaemonThread) -> None:
    daemon.fake.scenario = "error"
    job_id = submit(daemon)
    result = ctl(daemon, "wait", job_id)
    assert result.exit_code == int(Exit.JOB_FAILED) == 1
    assert f"job {job_id} failed" in result.stderr and "boom" in result.stderr
    failed = json.loads(ctl(daemon, "wait", job_id, "--json").stdout)
    assert failed["status"] == "failed"


def test_cancel_then_wait_exits_7(daemon: DaemonThread) -> None:
    daemon.fake.scenario = "hang"  # the first job holds the GPU; the second stays queued
    running = submit(daemon)
    queued = submit(daemon)
    status = ctl(daemon, "status", queued).stdout
    assert "queued" in status and "waiting for:" in status
    result = ctl(daemon, "cancel", queued)
    assert (result.exit_code, result.stdout.strip()) == (0, f"{queued} cancelled")
    result = ctl(daemon, "wait", queued)
    assert result.exit_code == int(Exit.CANCELLED) == 7 and "cancelled" in result.stderr
    again = ctl(daemon, "cancel", queued, "--json")
    assert again.exit_code == Exit.CONFLICT and json.loads(again.stdout)["error"]["code"] == 1009
    timeout = ctl(daemon, "wait", running, "--timeout", "0.1")
    assert timeout.exit_code == Exit.UNAVAILABLE and "still" in timeout.stderr
    as_json = ctl(daemon, "wait", running, "--timeout", "0.1", "--json")
    assert json.loads(as_json.stdout)["error"] == {
        "name": "unavailable", "exit": 6, "message": f"job {running} still running after 0 s"}
    stopping = ctl(daemon, "cancel", running)
    assert stopping.exit_code == 0, stopping.output
    assert stopping.stdout.strip() in (
        f"{running} running: cancelling (plasmactl wait {running} follows it to the end)",
        f"{running} cancelled",  # ComfyUI was quicker than the answer
    )


def test_health_exits_6_when_comfyui_does_not_answer(tmp_path: Path) -> None:
    down = DaemonThread(tmp_path, comfyui_url="http://127.0.0.1:9").start()  # nothing listens there
    try:
        result = ctl(down, "health")
        assert result.exit_code == int(Exit.UNAVAILABLE) == 6
        assert "plasmad:  ok" in result.stdout and "ComfyUI:  DOWN (" in result.stdout  # the report
        assert result.stderr.splitlines()[-1].startswith("plasmactl: ComfyUI does not answer (")
        as_json = ctl(down, "health", "--json")
        assert as_json.exit_code == 6
        report = json.loads(as_json.stdout)  # one JSON document: the report says why
        assert report["comfyui"] is False and report["status"] == "ok"
    finally:
        down.stop()


# --- the wait loop and the long poll it rests on ---------------------------------------------------------


async def _hanging_prompt(fake: FakeComfyUI) -> dict[str, Any]:
    """The prompt a `hang` job sent to the fake, once the daemon's WebSocket is there to hear it."""

    async def sent() -> dict[str, Any] | None:
        if fake.prompts and fake.prompts[-1].get("client_id") in fake.sockets:
            return fake.prompts[-1]
        return None

    return dict(await eventually(sent, "the prompt to reach the fake ComfyUI"))


async def _progress(fake: FakeComfyUI, prompt: dict[str, Any], step: int, total: int = 2) -> None:
    data = {"value": step, "max": total, "prompt_id": prompt["prompt_id"], "node": "7"}
    await fake._send(prompt["client_id"], "progress", data)


async def _succeed(fake: FakeComfyUI, prompt: dict[str, Any]) -> None:
    fake._succeed(prompt["prompt_id"])
    for kind, data in (("execution_success", {}), ("executing", {"node": None})):
        await fake._send(prompt["client_id"], kind, {**data, "prompt_id": prompt["prompt_id"]})


async def test_the_long_poll_returns_on_progress(open_api: OpenApi) -> None:
    api = await open_api()
    api.fake.scenario = "hang"
    job_id = await api.submit()
    await api.wait_job(job_id, ["running"])
    prompt = await _hanging_prompt(api.fake)
    loop = asyncio.get_running_loop()

    async def poll(**params: Any) -> dict[str, Any]:
        resp = await api.client.get(f"/jobs/{job_id}", params={k: str(v) for k, v in params.items()})
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())

    started = loop.time()  # nothing moves: the answer comes when the time is up
    assert (await poll(wait=0.3, step=0))["progress"] is None and loop.time() - started >= 0.3
    waiting = asyncio.create_task(poll(wait=30, step=0))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    started = loop.time()
    await _progress(api.fake, prompt, 1)  # a step: the long poll answers at once
    job = await asyncio.wait_for(waiting, 10)
    assert job["status"] == "running" and job["progress"] == {"step": 1, "total": 2}
    assert loop.time() - started < 5
    # A client behind the job gets the news without waiting; one up to date waits for the next step.
    assert (await poll(wait=30, step=0))["progress"]["step"] == 1
    waiting = asyncio.create_task(poll(wait=30, step=1))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    without_step = asyncio.create_task(poll(wait=30))  # as before: only the end answers
    await _progress(api.fake, prompt, 2)
    assert (await asyncio.wait_for(waiting, 10))["progress"]["step"] == 2
    await asyncio.sleep(0.2)
    assert not without_step.done()

    # Queued (-1): the answer comes when its place changes, here when the job ahead ends.
    second = await api.submit()
    queued = await rpc(api.stack.service, "status", {"id": second})
    assert queued["result"]["status"] == "queued"
    over_rpc = asyncio.create_task(rpc(api.stack.service, "status", {"id": second, "wait": 30, "step": -1}))
    await asyncio.sleep(0.2)
    assert not over_rpc.done()
    await _succeed(api.fake, prompt)
    assert (await asyncio.wait_for(without_step, 10))["status"] == "succeeded"
    moved = (await asyncio.wait_for(over_rpc, 10))["result"]
    assert moved["status"] != "queued" or moved["waitingFor"] != queued["result"]["waitingFor"]

    for bad in ("x", "-2", "1.5"):
        resp = await api.client.get(f"/jobs/{job_id}", params={"wait": "1", "step": bad})
        await expect_error(resp, 400, "step")


def test_the_wait_loop_redraws_each_step_and_polls_on_no_timer(
    daemon: DaemonThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon.fake.scenario = "hang"  # the test plays ComfyUI's progress, a step at a time
    job_id = submit(daemon)
    prompt = daemon.call(_hanging_prompt(daemon.fake))

    def play() -> None:
        for step in (1, 2):
            time.sleep(0.5)
            daemon.call(_progress(daemon.fake, prompt, step))
        time.sleep(0.5)
        daemon.call(_succeed(daemon.fake, prompt))

    calls: list[tuple[str, dict[str, Any]]] = []
    real_call = Ctl.call

    def counted(self: Ctl, method: str, **params: Any) -> Any:
        calls.append((method, params))
        return real_call(self, method, **params)

    monkeypatch.setattr(Ctl, "call", counted)
    monkeypatch.setattr(follow, "interactive", lambda ctl: not ctl.json)  # as on a terminal
    player = threading.Thread(target=play)
    player.start()
    result = ctl(daemon, "wait", job_id)
    player.join()
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(daemon.stack.cfg.state_dir / "images" / f"{job_id}.png")
    # The lines the old 0.25 s loop drew, each once, redrawn in place (click drops the erase code
    # when the output is not a terminal), and a new line at the end.
    assert result.stderr == (
        f"\r{job_id} running"
        f"\r{job_id} [{'#' * 15}{'-' * 15}] 1/2"
        f"\r{job_id} [{'#' * 30}] 2/2\n"
    )
    # One question per change (start, two steps, the end), not one per 0.25 s of a 1.5 s job.
    assert [m for m, _ in calls] == ["status"] * 4
    assert [p.get("step") for _, p in calls] == [None, 0, 1, 2]


def test_the_installed_console_script(daemon: DaemonThread) -> None:
    assert PLASMACTL.is_file(), f"{PLASMACTL} is missing: install the project (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLASMA_", "COMFYUI_", "KOHYA_"))}
    env["PLASMA_SOCKET"] = str(daemon.socket)
    ok = subprocess.run([str(PLASMACTL), "--json", "health"], env=env, capture_output=True, text=True,
                        timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["comfyui"] is True
    env["PLASMA_SOCKET"] = str(daemon.run_dir / "missing")
    down = subprocess.run([str(PLASMACTL), "jobs"], env=env, capture_output=True, text=True, timeout=30)
    assert down.returncode == 3 and down.stdout == ""
    assert len(down.stderr.splitlines()) == 1 and "Traceback" not in down.stderr
    down = subprocess.run([str(PLASMACTL), "jobs", "--json"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert down.returncode == 3 and json.loads(down.stdout)["error"]["name"] == "no_daemon"
    script = subprocess.run([str(PLASMACTL)], env={**env, "_PLASMACTL_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=30)  # the README's completion
    assert script.returncode == 0 and "_PLASMACTL_COMPLETE=bash_complete" in script.stdout
