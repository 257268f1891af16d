"""Managed mode: plasmad starts, watches, restarts and stops ComfyUI as a child (INFRA-01).

The child is a FAKE ComfyUI process (tests/fakes/fake_comfyui_child.py) run as a ComfyUI folder's
`main.py`: it serves the scripted FakeComfyUI on the port it is given, records the signals it
gets, and can be told to load slowly, to die (now, or every N seconds) and to ignore SIGTERM.
The lifecycle is driven in-process through ManagedComfyUI; a job that is running when the child
dies is driven through a real plasmad process. The last test starts the real demo ComfyUI in
managed mode through plasmad and generates an image with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from plasmad.comfy.client import ComfyClient
from plasmad.comfy.monitor import ComfyMonitor
from plasmad.comfy.process import BASE_FLAGS, ManagedComfyUI, ManagedStartError, describe_exit
from plasmad.core.events import EventBus
from tests.fakes.fake_comfyui import FakeComfyUI
from tests.fakes.fake_kohya_python import FAKE_KOHYA, write_fake_python
from tests.support.modelfiles import CHECKPOINT_SD15, make_models_dir
from tests.support.processes import (
    COMFY_DIR,
    COMFY_PYTHON,
    DEMO_CHECKPOINT,
    DaemonEnv,
    DaemonProcess,
    free_port,
)
from tests.support.training import NAME, make_dataset

REPO = Path(__file__).resolve().parent.parent


def fake_comfyui_dir(root: Path, body: str | None = None) -> Path:
    """A ComfyUI folder whose main.py is the FAKE child (or `body`), with FAKE model headers."""
    folder = root / "FakeComfyUI"
    folder.mkdir(parents=True, exist_ok=True)
    main = body or (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.fakes.fake_comfyui_child import main\n"
        "main()\n"
    )
    (folder / "main.py").write_text(main)
    if not (folder / "models").exists():
        make_models_dir(folder)
    return folder


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def until(check: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return value


@asynccontextmanager
async def managed(
    tmp_path: Path, *, extra: tuple[str, ...] = ("--cpu",), main: str | None = None, **kwargs: Any
) -> AsyncIterator[ManagedComfyUI]:
    folder = fake_comfyui_dir(tmp_path, main)
    url = f"http://127.0.0.1:{free_port()}"
    async with aiohttp.ClientSession() as session:
        process = ManagedComfyUI(
            Path(sys.executable), folder, url, extra, tmp_path / "logs" / "comfyui.log",
            ComfyClient(url, session, 0.05), **kwargs,
        )
        try:
            yield process
        finally:
            await process.stop()


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The FAKE child's control folder; the child inherits the environment set here."""
    folder = tmp_path / "control"
    folder.mkdir()
    monkeypatch.setenv("FAKE_COMFY_CONTROL", str(folder))
    return folder


# --- the lifecycle, in-process ---------------------------------------------------------------------


async def test_start_waits_until_comfyui_answers(tmp_path: Path, control: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_COMFY_START_DELAY", "1.5")
    async with managed(tmp_path) as m:
        started = time.monotonic()
        await m.start()
        assert time.monotonic() - started >= 1.5  # it waited for the slow start
        assert m.state == "running" and m.ready and m.pid is not None
        # It answers now, on the port of COMFYUI_URL, with the flags the requirements want.
        stats = f"{m.url}/system_stats"
        assert await asyncio.to_thread(lambda: urllib.request.urlopen(stats, timeout=5).status) == 200
        pid, argv_json = lines(control / "started")[0].split(" ", 1)
        argv = json.loads(argv_json)
        assert int(pid) == m.pid
        assert argv == [*BASE_FLAGS, "--port", m.url.rsplit(":", 1)[1], "--cpu"]
        assert "--force-fp16" in argv and "--fp32-vae" in argv
        assert argv[argv.index("--listen") + 1] == "127.0.0.1"
        info = m.info()
        assert info["managed"] is True and info["state"] == "running" and info["restarts"] == 0
        pid_running = m.pid
    # stop(): SIGTERM to the group, and the child is gone.
    assert lines(control / "signals") == [f"{pid_running} SIGTERM"]
    assert not alive(pid_running)
    assert m.state == "stopped"


async def test_a_dead_comfyui_is_restarted_with_backoff(tmp_path: Path, control: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="plasmad.comfy.process")
    monkeypatch.setenv("FAKE_COMFY_DIE_AFTER", "0.2")  # every incarnation dies soon after answering
    async with managed(tmp_path, backoff_s=0.1, max_backoff_s=0.4) as m:
        await m.start()
        await until(lambda: m.restarts >= 4, "four restarts", 60)
        delays = [r.args[2] for r in caplog.records if "restart %d in" in r.msg]  # type: ignore[index]
        assert delays[:4] == [0.1, 0.2, 0.4, 0.4]  # doubling, capped
        assert m.last_exit == 3 and m.info()["lastExitReason"] == "exit 3"
        assert m.info()["restarts"] == m.restarts
        pids = [int(line.split()[0]) for line in lines(control / "started")]
        assert len(set(pids)) == len(pids) >= 4  # a new process each time
        assert not any(alive(p) for p in pids[:-1])


async def test_an_idle_managed_comfyui_that_hangs_is_killed_and_started_again(
    tmp_path: Path, control: Path
) -> None:
    folder = fake_comfyui_dir(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    events = EventBus()
    async with aiohttp.ClientSession() as session:
        client = ComfyClient(url, session, 0.05, hang_s=1.0)
        m = ManagedComfyUI(
            Path(sys.executable), folder, url, ("--cpu",), tmp_path / "logs" / "comfyui.log", client,
            backoff_s=0.1,
        )  # fmt: skip
        monitor = ComfyMonitor(client, events, process=m, idle_probe_s=0.2, max_backoff_s=0.2)
        try:
            await m.start()
            await monitor.start()
            hung = m.pid
            assert hung is not None and monitor.up is True
            os.killpg(hung, signal.SIGSTOP)  # frozen: the kernel still accepts, nobody answers
            await until(lambda: m.restarts == 1 and m.state == "running", "the hung child to be replaced", 60)
            assert m.pid != hung and not alive(hung)
            assert str(m.last_exit_reason).startswith("killed by plasmad: hung (it did not answer for")
            await until(lambda: monitor.up is True, "the monitor to see it answer again")
            types = [e.type for e in events.since(f"{events.boot}-0")]
            assert types[types.index("comfyui.down") :].count("comfyui.up") == 1
        finally:
            await monitor.stop()
            await m.stop()


async def test_the_backoff_resets_after_a_stable_run(tmp_path: Path, control: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="plasmad.comfy.process")
    monkeypatch.setenv("FAKE_COMFY_DIE_AFTER", "0.6")
    async with managed(tmp_path, backoff_s=0.1, stable_after_s=0.3) as m:
        await m.start()
        await until(lambda: m.restarts >= 3, "three restarts", 60)
        delays = [r.args[2] for r in caplog.records if "restart %d in" in r.msg]  # type: ignore[index]
        assert delays[:3] == [0.1, 0.1, 0.1]


async def test_stop_kills_a_group_that_ignores_sigterm(tmp_path: Path, control: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_COMFY_IGNORE_TERM", "1")
    monkeypatch.setenv("FAKE_COMFY_GRANDCHILD", "1")
    async with managed(tmp_path, stop_timeout_s=1.0) as m:
        await m.start()
        leader = m.pid
        assert leader is not None
        grandchild = int(await until(lambda: (control / "grandchild").exists() and
                                     (control / "grandchild").read_text(), "the grandchild"))
        assert alive(grandchild)
        started = time.monotonic()
        await m.stop()
        took = time.monotonic() - started
    assert 1.0 <= took < 8, took  # waited the stop timeout, then SIGKILL
    assert f"{leader} SIGTERM" in lines(control / "signals")  # TERM came first, and was ignored
    await until(lambda: not alive(leader) and not alive(grandchild), "the whole group to be gone", 5)


async def test_stop_reaches_the_whole_group(tmp_path: Path, control: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_COMFY_GRANDCHILD", "1")
    async with managed(tmp_path, stop_timeout_s=5.0) as m:
        await m.start()
        grandchild = int(await until(lambda: (control / "grandchild").exists() and
                                     (control / "grandchild").read_text(), "the grandchild"))
        started = time.monotonic()
        await m.stop()
        assert time.monotonic() - started < 4  # a child that obeys TERM is not waited on
    await until(lambda: not alive(grandchild), "the grandchild to be gone", 5)


async def test_a_port_already_in_use_is_refused(tmp_path: Path, control: Path) -> None:
    other = TestServer(FakeComfyUI().app, host="127.0.0.1")
    await other.start_server()
    try:
        folder = fake_comfyui_dir(tmp_path)
        url = str(other.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as session:
            client = ComfyClient(url, session)
            m = ManagedComfyUI(Path(sys.executable), folder, url, (), tmp_path / "c.log", client)
            with pytest.raises(ManagedStartError, match=r"already answers .*COMFYUI_MANAGED=0"):
                await m.start()
        assert not (control / "started").exists()  # nothing was spawned
    finally:
        await other.close()


async def test_a_child_left_by_a_dead_plasmad_is_replaced(tmp_path: Path, control: Path) -> None:
    folder = fake_comfyui_dir(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    logs = tmp_path / "logs" / "comfyui.log"
    async with aiohttp.ClientSession() as session:
        client = ComfyClient(url, session)
        first = ManagedComfyUI(Path(sys.executable), folder, url, (), logs, client)
        await first.start()
        orphan = first.pid
        assert orphan is not None and first.pid_path.read_text().strip() == str(orphan)
        # plasmad dies (kill -9): its supervisor is gone, its ComfyUI, in its own session, lives on.
        assert first._task is not None
        first._task.cancel()
        await asyncio.gather(first._task, return_exceptions=True)
        assert alive(orphan)

        second = ManagedComfyUI(Path(sys.executable), folder, url, (), logs, client)
        try:
            await second.start()  # not refused: the port is held by our own orphan, which is stopped
            assert second.state == "running" and second.pid not in (None, orphan)
            assert f"{orphan} SIGTERM" in lines(control / "signals")
            assert not alive(orphan)
        finally:
            await second.stop()
        assert not second.pid_path.exists()  # a clean stop leaves no pid file


async def test_a_python_that_cannot_run_is_refused(tmp_path: Path) -> None:
    folder = fake_comfyui_dir(tmp_path)
    not_executable = tmp_path / "python"
    not_executable.write_text("")
    url = f"http://127.0.0.1:{free_port()}"
    async with aiohttp.ClientSession() as session:
        m = ManagedComfyUI(not_executable, folder, url, (), tmp_path / "c.log", ComfyClient(url, session))
        with pytest.raises(ManagedStartError, match="cannot start ComfyUI"):
            await m.start()
        assert m.state == "failed"


async def test_a_child_that_dies_at_start_does_not_hold_up_the_daemon(tmp_path: Path) -> None:
    async with managed(tmp_path, main="import sys\nprint('ModuleNotFoundError: torch')\nsys.exit(5)\n",
                       backoff_s=5.0, start_timeout_s=60) as m:
        started = time.monotonic()
        await m.start()
        assert time.monotonic() - started < 20  # not the 60 s start timeout
        assert m.last_exit == 5 and m.state == "restarting" and not m.ready
        # Its output is kept for the artist.
        assert "ModuleNotFoundError: torch" in m.log_path.read_text()


def test_exit_descriptions() -> None:
    assert describe_exit(3) == "exit 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL, often a sign of running out of memory"
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"


# --- through a real plasmad ------------------------------------------------------------------------


def managed_env(tmp_path: Path, control: Path) -> dict[str, str]:
    return {
        "COMFYUI_MANAGED": "1",
        "COMFYUI_PYTHON": sys.executable,
        "COMFYUI_DIR": str(fake_comfyui_dir(tmp_path)),
        "COMFYUI_URL": f"http://127.0.0.1:{free_port()}",
        "COMFYUI_ARGS": "--cpu",
        "PLASMA_CHECKPOINT": CHECKPOINT_SD15,
        "FAKE_COMFY_CONTROL": str(control),
    }


def wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def test_a_job_running_when_comfyui_dies_runs_again_after_the_restart(
    tmp_path: Path, start_daemon: Any
) -> None:
    control = tmp_path / "control"
    control.mkdir()
    (control / "scenario").write_text("hang")  # the prompt runs until something ends it
    d: DaemonProcess = start_daemon(**managed_env(tmp_path, control))
    _, health = d.http("GET", "/health")
    process = health["comfyuiInfo"]["process"]
    assert health["comfyui"] is True and process["managed"] is True and process["state"] == "running"
    first_pid = process["pid"]

    status, job = d.http("POST", "/jobs", {"prompt": "spyke", "resolution": {"width": 64, "height": 64}})
    assert status == 202, job
    wait_for(lambda: d.http("GET", f"/jobs/{job['id']}")[1]["status"] == "running", "the job to run")
    time.sleep(0.5)  # the prompt is in (the FAKE) ComfyUI now, hanging
    (control / "scenario").write_text("normal")  # for the next prompt, in the restarted child too
    time.sleep(0.2)
    (control / "die").write_text("7")
    # Not failed: it waits for the restarted ComfyUI, which has forgotten the prompt, and sends
    # it again there; the attempt ComfyUI did not finish is recorded with its reason.
    done = d.wait_job(job["id"], 60)
    assert done["status"] == "succeeded", done
    attempts = done["result"]["attempts"]
    assert len(attempts) == 1, attempts
    assert "stopped (exit 7) while running this job; plasmad restarts it" in attempts[0]["reason"]
    assert "comfyui.log" in attempts[0]["reason"]

    # Restarted: /health says so, and the next job runs on the new ComfyUI.
    def restarted() -> dict[str, Any] | None:
        _, h = d.http("GET", "/health")
        p = h["comfyuiInfo"]["process"]
        return p if p["restarts"] == 1 and p["state"] == "running" else None

    process = wait_for(restarted, "ComfyUI to be restarted")
    assert process["pid"] != first_pid and process["lastExit"] == 7 and process["lastExitReason"] == "exit 7"

    # The job's own log tells its story.
    status, log = d.http("GET", f"/jobs/{job['id']}/log")
    assert status == 200 and log["source"] == "job"
    text = "\n".join(log["lines"])
    assert f"job {job['id']} started" in text and text.count("sending prompt") == 2
    assert "attempt 1 of 3 did not finish" in text and "stopped (exit 7)" in text

    # SIGTERM to plasmad stops the (second) child with SIGTERM, and it is gone.
    second_pid = process["pid"]
    assert d.stop() == 0
    assert f"{second_pid} SIGTERM" in lines(control / "signals")
    assert not alive(second_pid)


def test_a_kohya_training_stops_the_managed_comfyui_and_starts_it_again_after(
    tmp_path: Path, start_daemon: Any
) -> None:
    control = tmp_path / "control"
    control.mkdir()
    dataset = make_dataset(tmp_path / "data")
    d: DaemonProcess = start_daemon(
        **managed_env(tmp_path, control),
        KOHYA_PYTHON=str(write_fake_python(tmp_path)),
        KOHYA_SCRIPT=str(FAKE_KOHYA),
        FAKE_KOHYA_SLOW="1",  # a step every FAKE_KOHYA_STEP_DELAY seconds
        FAKE_KOHYA_STEP_DELAY="0.4",
    )
    first_pid = d.http("GET", "/health")[1]["comfyuiInfo"]["process"]["pid"]
    body = {"datasetDir": str(dataset), "outputName": NAME, "steps": 6, "saveEverySteps": 2}
    status, t = d.http("POST", "/loras/train", body)
    assert status == 202, t

    def paused() -> dict[str, Any] | None:
        p = d.http("GET", "/health")[1]["comfyuiInfo"]["process"]
        return p if p["state"] == "paused" else None

    process = wait_for(paused, "ComfyUI to be stopped for the training")
    assert process["pausedFor"] == f"training {t['id']}" and process["pid"] is None
    assert f"{first_pid} SIGTERM" in lines(control / "signals")  # stopped the ordinary way
    assert not alive(first_pid)
    # A generation queued meanwhile waits, and says for what.
    status, job = d.http("POST", "/jobs", {"prompt": "spyke", "resolution": {"width": 64, "height": 64}})
    assert status == 202, job
    _, view = d.http("GET", f"/jobs/{job['id']}")
    assert view["status"] == "queued"
    assert view["waitingFor"].startswith(f"ComfyUI, stopped by plasmad during training {t['id']}")

    done = d.wait_for(f"/loras/{t['id']}/status", lambda s: s["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded", done
    assert d.wait_job(job["id"], 60)["status"] == "succeeded"  # on the ComfyUI started again
    # (Its supervisor may see it answer a moment after the monitor did.)
    process = d.wait_for("/health", lambda h: h["comfyuiInfo"]["process"]["state"] == "running")[
        "comfyuiInfo"
    ]["process"]
    assert process["pid"] not in (None, first_pid)
    assert process["restarts"] == 0 and process["pausedFor"] is None  # a pause is not a crash
    assert len(lines(control / "started")) == 2


def test_managed_mode_refuses_to_start_on_a_taken_port(tmp_path: Path, daemon_env: DaemonEnv) -> None:
    control = tmp_path / "control"
    env = managed_env(tmp_path, control)
    busy = FakeComfyUI()

    async def serve_and_start() -> tuple[int, str]:
        server = TestServer(busy.app, host="127.0.0.1", port=int(env["COMFYUI_URL"].rsplit(":", 1)[1]))
        await server.start_server()
        try:
            daemon_env.env.update(env)
            settings = ("PLASMA_", "COMFYUI_", "KOHYA_")
            proc_env = {k: v for k, v in os.environ.items() if not k.startswith(settings)}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "plasmad.daemon", env={**proc_env, **daemon_env.env},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            return proc.returncode or 0, out.decode()
        finally:
            await server.close()

    code, output = asyncio.run(serve_and_start())
    assert code == 2, output
    assert "COMFYUI_MANAGED: something already answers at" in output
    assert not (control / "started").exists()


# --- the real ComfyUI ------------------------------------------------------------------------------


@pytest.mark.comfyui
def test_real_comfyui_managed_by_plasmad_generates(tmp_path: Path, daemon_env: DaemonEnv) -> None:
    if not (COMFY_PYTHON.exists() and (COMFY_DIR / "models" / "checkpoints" / DEMO_CHECKPOINT).exists()):
        if os.environ.get("CI"):
            pytest.fail("the demo ComfyUI is not set up (scripts/setup-comfyui.sh)")
        pytest.skip("the demo ComfyUI is not set up (scripts/setup-comfyui.sh)")
    out = tmp_path / "comfy-out"
    daemon_env.env.update(
        COMFYUI_MANAGED="1",
        COMFYUI_PYTHON=str(COMFY_PYTHON),
        COMFYUI_DIR=str(COMFY_DIR),
        COMFYUI_URL=f"http://127.0.0.1:{free_port()}",
        COMFYUI_ARGS=f"--cpu --output-directory {out} --disable-auto-launch",
    )
    d = DaemonProcess(daemon_env, startup_timeout=240)
    try:
        _, health = d.http("GET", "/health")
        process = health["comfyuiInfo"]["process"]
        assert health["comfyui"] is True and process["state"] == "running"
        assert health["comfyuiInfo"]["version"] == "0.3.75"
        assert health["comfyuiInfo"]["fp32Vae"] is True and health["comfyuiInfo"]["forceFp16"] is True
        status, job = d.http("POST", "/jobs", {"prompt": "spyke_plasma_v1, standing",
                                               "resolution": {"width": 64, "height": 64}, "steps": 2})
        assert status == 202, job
        done = d.wait_job(job["id"], 300)
        assert done["status"] == "succeeded", done
        assert Path(done["outputs"][0]).is_file()
        assert done["result"]["timing"]["steps"] == 2
        pid = process["pid"]
    finally:
        code = d.stop() if d.proc.poll() is None else d.proc.returncode
    assert code == 0
    assert not alive(pid)  # the daemon stopped its ComfyUI
    assert (daemon_env.state_dir / "logs" / "comfyui.log").stat().st_size > 0

