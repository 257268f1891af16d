"""plasmactl against plasmad's own JSON-RPC server, in-process, over the FAKE ComfyUI.

`DaemonThread` runs the server (`bind_socket` + `start_rpc_server` over the real Service, store
and queue of tests/support/app.py) on its own event loop in a background thread, so that click's
CliRunner can drive the CLI in the main thread exactly as a terminal would, socket and all.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import warnings
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from click.testing import CliRunner, Result

from plasmactl.cli import cli
from plasmad.api.http import create_app
from tests.fakes.fake_comfyui import FakeComfyUI
from tests.support.app import Stack, fake_comfyui, make_config, service_stack

with warnings.catch_warnings():
    # jsonrpcserver 5 reads its schema through importlib.resources' deprecated open_text when
    # imported, and warnings are errors here (the pyproject filter names the wrong module).
    warnings.simplefilter("ignore", DeprecationWarning)
    from plasmad.api.rpc import bind_socket, build_methods, start_rpc_server

T = TypeVar("T")


class DaemonThread:
    """plasmad's socket API and worker on their own event loop, in a background thread."""

    def __init__(self, root: Path, *, http: bool = False, start_worker: bool = True, **cfg: Any) -> None:
        """`cfg` overrides Config fields (tests/support/app.py's make_config), e.g. a dead
        `comfyui_url` for a ComfyUI that does not answer. `http`: the HTTP app too, on a free
        loopback port (`url`), for clients that are not asyncio (schemathesis, node)."""
        self.root = root
        self.overrides = cfg
        self.serve_http = http
        self.start_worker = start_worker
        self.url = ""
        # AF_UNIX paths are capped near 104 bytes; pytest's tmp paths are long.
        self.run_dir = Path(tempfile.mkdtemp(prefix="plc-", dir="/tmp"))
        self.socket = self.run_dir / "s"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="plasmad-test", daemon=True)
        self._exits = AsyncExitStack()
        self.fake: FakeComfyUI
        self.stack: Stack

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.fake, url = await self._exits.enter_async_context(fake_comfyui())
        cfg = make_config(self.root, **{"comfyui_url": url, "socket_path": self.socket, **self.overrides})
        self.stack = await self._exits.enter_async_context(service_stack(cfg, start_worker=self.start_worker))
        server = await start_rpc_server(bind_socket(self.socket), self.stack.service, build_methods())
        if self.serve_http:
            runner = web.AppRunner(create_app(self.stack.service), access_log=None)
            await runner.setup()
            self._exits.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            # Before the listener closes (exits run last-in first-out), as the daemon does: the
            # event streams still open end now, not when their connections time out.
            stack = self.stack
            self._exits.callback(stack.core.stop_accepting)

        async def close() -> None:
            server.close()
            await server.wait_closed()

        self._exits.push_async_callback(close)

    def start(self) -> DaemonThread:
        self.thread.start()
        self.call(self._start())
        return self

    def stop(self) -> None:
        try:
            self.call(self._exits.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            shutil.rmtree(self.run_dir, ignore_errors=True)

    @property
    def pipeline(self) -> Path:
        return self.stack.cfg.pipeline_dir or Path()


def run_cli(args: list[str], env: dict[str, str] | None = None) -> Result:
    """plasmactl in-process; a crash inside it (not a clean exit) fails the test with its traceback."""
    result = CliRunner().invoke(cli, args, env=env, prog_name="plasmactl")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result


def ctl(daemon: DaemonThread, *args: str) -> Result:
    """plasmactl in-process, talking to `daemon` over its socket."""
    return run_cli(["--socket", str(daemon.socket), *args])
