"""JSON-RPC 2.0 over the Unix socket, for plasmactl (jsonrpcserver).

Framing: one JSON-RPC request per line, one response per line. Each method is an adapter over
`Service`, like the HTTP views; a PlasmaError becomes a JSON-RPC error whose `code` is the same
stable code the HTTP body carries, with the same dict in `data`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jsonrpcserver import Error, Result, Success, async_dispatch

from plasmad.api.contract import RpcCall
from plasmad.api.methods import methods
from plasmad.api.service import Service
from plasmad.core.errors import ErrorCode, PlasmaError
from plasmad.core.wire import MAX_BODY_BYTES, check_text

log = logging.getLogger(__name__)

MAX_LINE = MAX_BODY_BYTES + 1  #: a request and its newline; past it, PAYLOAD_TOO_LARGE (issue 10)
DROP_AT_MOST = 256 * 1024 * 1024  #: of one oversized line; a client sending more is cut off
Method = Callable[..., Awaitable[Result]]


def _adapt(fn: RpcCall) -> Method:
    async def method(service: Service, **params: Any) -> Result:
        try:
            check_text(params)  # NUL bytes and lone surrogates: refused before any operation
            return Success(await fn(service, params))
        except PlasmaError as err:
            return Error(int(err.code), err.message, err.to_dict())
        except Exception:
            log.exception("unhandled error in a JSON-RPC method")
            bug = PlasmaError(ErrorCode.INTERNAL, "internal error; see plasmad's log")
            return Error(int(bug.code), bug.message, bug.to_dict())

    return method


def build_methods(extra: dict[str, RpcCall] | None = None) -> dict[str, Method]:
    """The dispatch table; `extra` provides the methods declared without a call (the daemon's
    `shutdown`) or adds test-only ones."""
    table: dict[str, RpcCall] = {m.name: m.call for m in methods() if m.call is not None}
    table.update(extra or {})
    return {name: _adapt(fn) for name, fn in table.items()}


async def _serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, service: Service, methods: dict[str, Method]
) -> None:
    try:
        while (line := await _read_request(reader)) is not None:
            if line is _TOO_LARGE:
                response = _too_large_response()
            elif not line.strip():
                continue
            else:
                text = line.decode("utf-8", "replace")
                response = await async_dispatch(text, methods=methods, context=service)
            if response:
                writer.write(response.encode() + b"\n")
                await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        log.debug("a socket client went away: %s", exc or type(exc).__name__)
    finally:
        writer.close()


_TOO_LARGE = b"(a line over MAX_LINE)"  #: what _read_request gives for a request too large to read


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """The next request line; None at the end; _TOO_LARGE for a line over MAX_LINE, which is read
    to its end and dropped (so the connection goes on with the next request)."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:  # the end: a last line without its newline, or none
        return exc.partial or None
    except asyncio.LimitOverrunError as exc:
        overrun = exc
    dropped = 0
    while True:  # what is buffered of the long line goes, then the rest of it as it comes
        dropped += overrun.consumed
        if dropped > DROP_AT_MOST:
            raise ConnectionResetError(f"a request line of over {DROP_AT_MOST} bytes: connection ended")
        await reader.readexactly(overrun.consumed)
        try:
            await reader.readuntil(b"\n")
            return _TOO_LARGE
        except asyncio.LimitOverrunError as exc:
            overrun = exc


def _too_large_response() -> str:
    """The error HTTP gives as a 413, as JSON-RPC (the request's id is unknown: null)."""
    err = PlasmaError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"the request is over {MAX_BODY_BYTES} bytes; plasmad takes at most that",
        details={"limit": MAX_BODY_BYTES},
    )
    error = {"code": int(err.code), "message": err.message, "data": err.to_dict()}
    return json.dumps({"jsonrpc": "2.0", "error": error, "id": None})


def bind_socket(path: Path) -> socket.socket:
    """A listening socket published at `path` atomically, 0600 inside a 0700 folder.

    Bound under a temp name, made private, then renamed into place: a client never sees a socket
    with looser permissions, and a live daemon's socket is never unlinked (the caller holds the
    single-instance lock before calling this).
    """
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise PermissionError(f"{folder} belongs to another user")
    os.chmod(folder, 0o700)
    tmp = folder / f".{path.name}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, 0o600)
        sock.listen(64)
        os.replace(tmp, path)
    except BaseException:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise
    sock.setblocking(False)
    return sock


async def start_rpc_server(
    sock: socket.socket, service: Service, methods: dict[str, Method]
) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(reader, writer, service, methods)

    return await asyncio.start_unix_server(handle, sock=sock, limit=MAX_LINE)
