"""A small synchronous JSON-RPC 2.0 client for plasmad's Unix socket (one request per line)."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from typing import Any

from plasmad.core.errors import PlasmaError


class DaemonUnavailable(Exception):
    """No daemon answers on the socket."""


class DaemonClient:
    def __init__(self, socket_path: Path, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._buffer = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                raise DaemonUnavailable(
                    f"plasmad is not running (no daemon at {self.socket_path}); start it with `plasmad`"
                ) from exc
            except OSError as exc:
                sock.close()
                raise DaemonUnavailable(f"cannot reach plasmad at {self.socket_path}: {exc}") from exc
            self._sock = sock
        return self._sock

    def call(self, method: str, **params: Any) -> Any:
        """Call `method`; its result, or the daemon's PlasmaError raised here."""
        request_id = next(self._ids)
        request = {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id}
        sock = self._connect()
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            while b"\n" not in self._buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise DaemonUnavailable("plasmad closed the connection (is it stopping?)")
                self._buffer += chunk
        except (TimeoutError, OSError) as exc:
            self.close()
            raise DaemonUnavailable(f"plasmad did not answer: {exc}") from exc
        line, self._buffer = self._buffer.split(b"\n", 1)
        response = json.loads(line)
        if "error" in response:
            error = response["error"]
            data = error.get("data")
            if isinstance(data, dict) and "code" in data:
                raise PlasmaError.from_dict(data)
            raise PlasmaError.from_dict({"code": 1099, "message": f"{error.get('message')} ({data})"})
        return response.get("result")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buffer = b""

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
