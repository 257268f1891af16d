"""plasmad's main: start in order, run until SIGTERM/SIGINT (or `plasmactl shutdown`), stop in order.

The daemon is an aiohttp app whose resources are cleanup contexts (start, yield, stop), so they
stop in the reverse of their start. Start: config -> single-instance lock -> store -> ComfyUI
client -> managed ComfyUI -> templates, the ComfyUI monitor (one probe), queue recovery, worker
-> socket -> HTTP. Stop: refuse
new work -> close the HTTP listener -> close the socket -> stop the queue (the running job gets a
grace period, then is parked for the next start) -> stop a managed ComfyUI -> close the client and
the store -> remove the runtime file and the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import web

from plasmad import __version__
from plasmad.api.http import create_app
from plasmad.api.request import SERVICE
from plasmad.api.rpc import bind_socket, build_methods, start_rpc_server
from plasmad.api.service import Service, build_service
from plasmad.comfy.client import ComfyClient
from plasmad.comfy.process import ManagedComfyUI, ManagedStartError
from plasmad.comfy.templates import TemplateError, TemplateSet
from plasmad.core.config import Config, ConfigError, load_config
from plasmad.core.fsutil import replace_atomic, sweep_stale_temps
from plasmad.core.logging_setup import setup_logging
from plasmad.core.store import JobStore
from plasmad.generation import pipeline_files
from plasmad.training.samples import SAMPLES_LORA_FOLDER

log = logging.getLogger("plasmad")

EXIT_CONFIG = 2
EXIT_ALREADY_RUNNING = 3
EXIT_CANNOT_BIND = 4


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def instance_lock(path: Path) -> Any:
    """Hold `path` locked for the daemon's life; refuse to start while another daemon holds it.

    Taken before the socket is bound: asyncio's unix server would unlink a live daemon's socket.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    f: IO[str] = path.open("a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise StartupError(
            f"another plasmad is running (pid {pid}, lock {path})", EXIT_ALREADY_RUNNING
        ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # only the owner gets here
        f.close()


STORE = web.AppKey("store", JobStore)
COMFY = web.AppKey("comfy", ComfyClient)
MANAGED = web.AppKey("managed", ManagedComfyUI)


class Daemon:
    """Starts the resources in order (one cleanup context each, stopped in reverse), serves HTTP
    and the socket until SIGTERM/SIGINT or `plasmactl shutdown`, then stops in order."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stop_requested = asyncio.Event()
        self.http_port = cfg.http_port

    def request_stop(self) -> None:
        self.stop_requested.set()

    def create_app(self) -> web.Application:
        """The daemon as an aiohttp app: its resources start with it and stop with it."""
        app = create_app()
        app.cleanup_ctx.extend(
            [self._store, self._comfy_client, self._managed_comfyui, self._service, self._socket]
        )
        return app

    async def run(self) -> None:
        cfg = self.cfg
        with instance_lock(cfg.lock_path):
            app = self.create_app()
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            loop = asyncio.get_running_loop()
            runtime_file = cfg.state_dir / "runtime.json"
            try:
                await runner.setup()
                await self._listen(runner)
                await asyncio.to_thread(replace_atomic, runtime_file, json.dumps(self._runtime()).encode())
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self.request_stop)
                # Everything built so far (modules, the app, settings) lives as long as the daemon:
                # out of the collector's sight, a full collection scans only what came after, ~35
                # ms less of a pause that would stall every request meanwhile (issue 10).
                gc.freeze()
                log.info(
                    "plasmad %s ready: http://%s:%d, socket %s, ComfyUI %s",
                    __version__, cfg.http_host, self.http_port, cfg.socket_path, cfg.comfyui_url,
                )  # fmt: skip
                await self.stop_requested.wait()
                log.info("stopping: no new work; the running job gets %.0f s", cfg.shutdown_grace_s)
                app[SERVICE].core.stop_accepting()
            finally:
                # Listeners first, then (in reverse of their start) the socket, the queue, a managed
                # ComfyUI, the client and the store.
                await runner.cleanup()
                runtime_file.unlink(missing_ok=True)
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        log.info("plasmad stopped")

    async def _listen(self, runner: web.AppRunner) -> None:
        cfg = self.cfg
        try:
            await web.TCPSite(runner, cfg.http_host, cfg.http_port).start()
        except OSError as exc:
            what = "address in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise StartupError(
                f"cannot listen ({what}): PLASMA_HTTP_PORT={cfg.http_port}", EXIT_CANNOT_BIND
            ) from exc
        self.http_port = runner.addresses[0][1] if runner.addresses else cfg.http_port

    def _runtime(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "httpHost": self.cfg.http_host,
            "httpPort": self.http_port,
            "socket": str(self.cfg.socket_path),
            "version": __version__,
        }

    # --- the resources, one cleanup context each ------------------------------------------------------

    async def _store(self, app: web.Application) -> AsyncIterator[None]:
        store = JobStore(self.cfg.db_path)
        await store.open()
        app[STORE] = store
        yield
        await store.close()

    async def _comfy_client(self, app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app[COMFY] = ComfyClient(
                self.cfg.comfyui_url, session, self.cfg.history_poll_s, self.cfg.comfyui_hang_s
            )
            yield

    async def _managed_comfyui(self, app: web.Application) -> AsyncIterator[None]:
        cfg = self.cfg
        if not cfg.comfyui_managed:
            yield
            return
        assert cfg.comfyui_python is not None and cfg.comfyui_dir is not None
        managed = ManagedComfyUI(
            cfg.comfyui_python,
            cfg.comfyui_dir,
            cfg.comfyui_url,
            cfg.comfyui_args,
            cfg.logs_dir / "comfyui.log",
            app[COMFY],
            pid_path=cfg.state_dir / "comfyui.pid",
        )
        try:
            await managed.start()
        except ManagedStartError as exc:
            raise StartupError(f"COMFYUI_MANAGED: {exc}", EXIT_CONFIG) from exc
        app[MANAGED] = managed
        yield
        await managed.stop()  # after the queue it served has stopped

    async def _service(self, app: web.Application) -> AsyncIterator[None]:
        cfg = self.cfg
        try:
            templates = await asyncio.to_thread(TemplateSet, cfg.templates_dir)
        except TemplateError as exc:
            raise StartupError(f"PLASMA_TEMPLATES_DIR: {exc}", EXIT_CONFIG) from exc
        service = build_service(cfg, app[STORE], app[COMFY], templates, app.get(MANAGED))
        app[SERVICE] = service
        queue, monitor = service.core.queue, service.core.monitor
        await service.benchmarks.load()
        await asyncio.to_thread(sweep_temps, cfg)
        # Before the worker: it asks the monitor whether ComfyUI answers before it takes a job.
        await monitor.start()
        await queue.recover()
        queue.start()
        yield
        await queue.stop(cfg.shutdown_grace_s)  # the running job gets its grace, then is parked
        await monitor.stop()
        await service.benchmarks.close()
        await service.core.hasher.close()  # a big file still being hashed is dropped, not waited for

    async def _socket(self, app: web.Application) -> AsyncIterator[None]:
        path = self.cfg.socket_path
        try:
            sock = bind_socket(path)
        except OSError as exc:
            raise StartupError(f"cannot listen on PLASMA_SOCKET={path}: {exc}", EXIT_CANNOT_BIND) from exc
        methods = build_methods({"shutdown": self._rpc_shutdown})
        server = await start_rpc_server(sock, app[SERVICE], methods)
        yield
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    async def _rpc_shutdown(self, service: Service, params: dict[str, Any]) -> dict[str, Any]:
        # The same path as SIGTERM: only sets the event.
        self.request_stop()
        return {"stopping": True}


#: A temp file this old is a leftover (a kill -9 mid-write), not one being written: our writes take
#: seconds, the largest (a LoRA copied into ComfyUI's loras/) well under a minute.
STALE_TEMP_AGE_S = 15 * 60


def sweep_temps(cfg: Config) -> None:
    """Remove the stale temp files of ours from every folder plasmad writes into (blocking)."""
    # Every folder of the state dir (images, rejected, trainings, thumbnails, reproductions,
    # consistency runs...: all plasmad's own), the pipeline's output folders, and the ComfyUI folders
    # plasmad copies into (input/, loras/ and its own loras/plasma-samples/<id>/).
    folders = [Path(d) for d, _, _ in os.walk(cfg.state_dir)]
    if cfg.pipeline_dir is not None:
        folders += pipeline_files.output_folders(cfg.pipeline_dir)
    if cfg.comfyui_dir is not None:
        loras = cfg.comfyui_dir / "models" / "loras"
        folders += [cfg.comfyui_dir / "input", loras]
        folders += [Path(d) for d, _, _ in os.walk(loras / SAMPLES_LORA_FOLDER)]
    for path in sweep_stale_temps(folders, STALE_TEMP_AGE_S):
        log.info("removed %s: a temp file left by a write that was cut short", path)


def main(argv: list[str] | None = None) -> None:
    """Run plasmad in the foreground (launchd/systemd keep it running)."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(
            "usage: plasmad\n\nRuns the Plasma daemon in the foreground. Configuration comes from the "
            "environment and PLASMA_CONFIG; see the README."
        )
        return
    if args and args[0] == "--version":
        print(f"plasmad {__version__}")
        return
    try:
        cfg = load_config()
    except ConfigError as exc:
        print(f"plasmad: configuration error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        listener = setup_logging(cfg.logs_dir)
    except OSError as exc:
        print(f"plasmad: PLASMA_STATE_DIR: cannot use {cfg.state_dir}: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        asyncio.run(Daemon(cfg).run())
    except StartupError as exc:
        listener.stop()
        print(f"plasmad: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    listener.stop()


if __name__ == "__main__":
    main()
