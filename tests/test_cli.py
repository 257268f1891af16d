"""plasmactl against a real JSON-RPC server, in-process, over a FAKE ComfyUI.

The server is plasmad's own (`bind_socket` + `start_rpc_server` over the real Service, store and
queue), run in a background thread's event loop (tests/support/cli.py's DaemonThread; the `daemon`
fixture is tests/conftest.py's), so click's CliRunner can drive the CLI in the main thread exactly
as a terminal would, socket and all. One test runs the installed console script as a child process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from plasmactl.output import Exit
from plasmad.generation import pipeline_files
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


def test_help_needs_no_daemon() -> None:
    result = run_cli(["--socket", "/nonexistent", "--help"])
    assert result.exit_code == 0 and "submit" in result.stdout and "generate" in result.stdout


# --- against the daemon ----------------------------------------------------------------------------------


def test_health(daemon: DaemonThread) -> None:
    result = ctl(daemon, "health")
    assert result.exit_code == 0, result.output
    assert "ComfyUI:  ok 0.3.75-fake" in result.stdout and "GPU:      free" in result.stdout
    assert "mps:      no; fp32 VAE: yes" in result.stdout
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
