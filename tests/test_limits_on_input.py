"""Bodies over 1 MB get 413 on HTTP and the same error on the socket; a client that hangs up
mid-body is no error of ours (issue 10, item 6).

The 413s run in-process (the real app, the real socket server over the FAKE ComfyUI); the hang-ups
go to a real plasmad process, whose own log must show no traceback for them.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import time
from typing import Any

from plasmad.core.errors import ErrorCode
from plasmad.core.wire import MAX_BODY_BYTES
from tests.support.app import Api, expect_error
from tests.support.cli import DaemonThread, ctl


async def test_an_http_body_over_1_mb_is_a_413_with_a_json_error(api: Api) -> None:
    big = io.BytesIO(json.dumps({"prompt": "x" * MAX_BODY_BYTES}).encode())
    error = await expect_error(await api.post("/jobs", data=big), 413)
    assert error["code"] == ErrorCode.PAYLOAD_TOO_LARGE and error["name"] == "payload_too_large"
    assert f"at most {MAX_BODY_BYTES} bytes" in error["message"]

    async def chunks() -> Any:  # no Content-Length: refused once the reader passes the limit
        for _ in range(3):
            yield b" " * (MAX_BODY_BYTES // 2)
        yield b'{"prompt": "x"}'

    resp = await api.client.post("/jobs", data=chunks(), headers={"Content-Type": "application/json"})
    assert (await expect_error(resp, 413))["code"] == ErrorCode.PAYLOAD_TOO_LARGE
    # Just under the limit, the body is read and judged on its merits.
    under = io.BytesIO(json.dumps({"prompt": "x" * (MAX_BODY_BYTES - 100)}).encode())
    error = await expect_error(await api.post("/jobs", data=under), 400)
    assert error["field"] == "prompt"


def rpc_line(path: str, payload: bytes) -> dict[str, Any]:
    """Send raw bytes to the socket; the first answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(path)
        sock.sendall(payload)
        return dict(json.loads(sock.makefile("rb").readline()))


def test_a_socket_request_over_1_mb_gets_the_same_error_and_the_connection_goes_on(
    daemon: DaemonThread,
) -> None:
    big = {"jsonrpc": "2.0", "id": 7, "method": "submit", "params": {"prompt": "x" * MAX_BODY_BYTES}}
    ok = {"jsonrpc": "2.0", "id": 8, "method": "jobs", "params": {}}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(daemon.socket))
        reader = sock.makefile("rb")
        sock.sendall(json.dumps(big).encode() + b"\n" + json.dumps(ok).encode() + b"\n")
        answer, reply = json.loads(reader.readline()), json.loads(reader.readline())
    assert answer["id"] is None  # the request was never read, so neither was its id
    assert answer["error"]["code"] == ErrorCode.PAYLOAD_TOO_LARGE
    assert answer["error"]["data"]["name"] == "payload_too_large"
    assert reply["id"] == 8 and reply["result"] == []  # the next request on the same connection


def test_plasmactl_says_a_request_is_too_large(daemon: DaemonThread) -> None:
    result = ctl(daemon, "--json", "submit", "-p", "x" * (MAX_BODY_BYTES + 10))
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["name"] == "payload_too_large" and f"{MAX_BODY_BYTES} bytes" in error["message"]


def test_odd_text_in_ids_and_queries_is_a_400_naming_it(daemon: DaemonThread) -> None:
    for params, field in (({"id": "j_\x00"}, "id"), ({"id": "j_\ud800"}, "id"), ({"id": "j" * 500}, "id")):
        request = {"jsonrpc": "2.0", "id": 1, "method": "status", "params": params}
        answer = rpc_line(str(daemon.socket), json.dumps(request).encode() + b"\n")
        assert answer["error"]["code"] == ErrorCode.INVALID_INPUT, answer
        assert answer["error"]["data"]["field"] == field


async def test_odd_text_in_the_url_is_a_400_naming_it(api: Api) -> None:
    error = await expect_error(await api.client.get("/jobs/j_%00"), 400, "id")
    assert "NUL" in error["message"]
    await expect_error(await api.client.get("/jobs?status=%00"), 400, "status")
    await expect_error(await api.client.get("/logs?job=" + "j" * 300), 400, "job")


def test_a_client_that_hangs_up_mid_body_leaves_no_traceback(start_daemon: Any) -> None:
    daemon = start_daemon()
    head = (
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    ) + b'{"prompt": '
    for how in ("close", "reset", "half-close"):
        with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
            sock.sendall(head)
            time.sleep(0.2)  # the daemon is reading the body by now
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif how == "half-close":
                sock.shutdown(socket.SHUT_WR)
                time.sleep(0.2)
    status, health = daemon.http("GET", "/jobs")  # still serving
    assert status == 200 and health == []
    daemon.stop()
    text = daemon.log.read_text()
    assert "Traceback" not in text and " ERROR " not in text, text


def test_a_request_aiohttp_cannot_parse_is_a_400_and_one_log_line(start_daemon: Any) -> None:
    """A URL over aiohttp's 8 KB line limit never reaches our code: aiohttp answers 400 itself (plain
    text: its own answer), and plasmad logs one line, not a traceback."""
    daemon = start_daemon()
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(b"GET /jobs/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = sock.recv(200)
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer
    status, _ = daemon.http("GET", "/jobs")  # still serving
    assert status == 200
    daemon.stop()
    text = daemon.log.read_text()
    assert "Traceback" not in text and " ERROR " not in text, text
    assert "refused with 400: Got more than 8190 bytes" in text
