"""plasmad's main: start in order, run until SIGTERM/SIGINT (or `plasmactl shutdown`), stop in order.

Start: config -> single-instance lock -> store -> templates -> ComfyUI client -> queue recovery ->
worker -> HTTP -> socket. Stop: refuse new work -> close the listeners -> stop the queue (the
running job gets a grace period, then is parked for the next start) -> close the client and the
store -> remove the socket, the runtime file and the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
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
from plasmad.api.rpc import bind_socket, build_methods, start_rpc_server
from plasmad.api.service import Service
from plasmad.comfy.client import ComfyClient
from plasmad.comfy.process import ManagedComfyUI, ManagedStartError
from plasmad.comfy.templates import TemplateError, TemplateSet
from plasmad.core.config import Config, ConfigError, load_config
from plasmad.core.fsutil import replace_atomic
from plasmad.core.gpu_lock import GpuLock
from plasmad.core.job_queue import Handler, JobQueue
from plasmad.core.logging_setup import setup_logging
from plasmad.core.states import JobKind
from plasmad.core.store import JobStore
from plasmad.generation.handler import GenerationHandler
from plasmad.training.service import TrainingHandler

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


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stop_requested = asyncio.Event()

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def run(self) -> None:
        cfg = self.cfg
        with instance_lock(cfg.lock_path):
            async with self._services() as (service, queue, http_runner, rpc_server):
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self.request_stop)
                log.info(
                    "plasmad %s ready: http://%s:%d, socket %s, ComfyUI %s",
                    __version__,
                    cfg.http_host,
                    self.http_port,
                    cfg.socket_path,
                    cfg.comfyui_url,
                )
                await self.stop_requested.wait()
                log.info("stopping: no new work; the running job gets %.0f s", cfg.shutdown_grace_s)
                service.accepting = False
                rpc_server.close()
                await http_runner.shutdown()
                await queue.stop(cfg.shutdown_grace_s)
                await http_runner.cleanup()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        log.info("plasmad stopped")

    @contextlib.asynccontextmanager
    async def _services(
        self,
    ) -> AsyncIterator[tuple[Service, JobQueue, web.AppRunner, asyncio.AbstractServer]]:
        cfg = self.cfg
        try:
            templates = TemplateSet(cfg.templates_dir)
        except TemplateError as exc:
            raise StartupError(f"PLASMA_TEMPLATES_DIR: {exc}", EXIT_CONFIG) from exc
        store = JobStore(cfg.db_path)
        await store.open()
        session = aiohttp.ClientSession()
        runtime_file = cfg.state_dir / "runtime.json"
        managed: ManagedComfyUI | None = None
        try:
            comfy = ComfyClient(cfg.comfyui_url, session, cfg.history_poll_s)
            if cfg.comfyui_managed:
                assert cfg.comfyui_python is not None and cfg.comfyui_dir is not None
                managed = ManagedComfyUI(
                    cfg.comfyui_python,
                    cfg.comfyui_dir,
                    cfg.comfyui_url,
                    cfg.comfyui_args,
                    cfg.logs_dir / "comfyui.log",
                    comfy,
                    pid_path=cfg.state_dir / "comfyui.pid",
                )
                try:
                    await managed.start()
                except ManagedStartError as exc:
                    raise StartupError(f"COMFYUI_MANAGED: {exc}", EXIT_CONFIG) from exc
            gpu = GpuLock()
            handlers: dict[JobKind, Handler] = {
                JobKind.GENERATE: GenerationHandler(cfg, store, comfy),
                JobKind.TRAIN: TrainingHandler(cfg, store, comfy),
            }
            if managed is not None:
                # A job running when ComfyUI dies fails at once with the reason, instead of hanging.
                handlers[JobKind.GENERATE] = managed.guarded(handlers[JobKind.GENERATE])
            queue = JobQueue(store, gpu, handlers)
            service = Service(cfg, store, queue, gpu, comfy, templates)
            service.comfy_process = managed
            await service.benchmarks.load()
            await queue.recover()
            queue.start()
            methods = build_methods({"shutdown": self._rpc_shutdown})
            runner = web.AppRunner(create_app(service), handle_signals=False, access_log=None)
            await runner.setup()
            try:
                site = web.TCPSite(runner, cfg.http_host, cfg.http_port)
                await site.start()
                sock = bind_socket(cfg.socket_path)
            except OSError as exc:
                await runner.cleanup()
                await queue.stop(0)
                what = "address in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
                raise StartupError(
                    f"cannot listen ({what}): PLASMA_HTTP_PORT={cfg.http_port} / "
                    f"PLASMA_SOCKET={cfg.socket_path}",
                    EXIT_CANNOT_BIND,
                ) from exc
            self.http_port = runner.addresses[0][1] if runner.addresses else cfg.http_port
            rpc_server = await start_rpc_server(sock, service, methods)
            info = {
                "pid": os.getpid(),
                "httpHost": cfg.http_host,
                "httpPort": self.http_port,
                "socket": str(cfg.socket_path),
                "version": __version__,
            }
            await asyncio.to_thread(replace_atomic, runtime_file, json.dumps(info).encode())
            try:
                yield service, queue, runner, rpc_server
            finally:
                rpc_server.close()
                await service.benchmarks.close()
                with contextlib.suppress(FileNotFoundError):
                    cfg.socket_path.unlink()

        finally:
            if managed is not None:
                await managed.stop()  # last of the workers: the queue it served has stopped
            runtime_file.unlink(missing_ok=True)
            await session.close()
            await store.close()

    async def _rpc_shutdown(self, service: Service, params: dict[str, Any]) -> dict[str, Any]:
        # The same path as SIGTERM: only sets the event.
        self.request_stop()
        return {"stopping": True}


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
