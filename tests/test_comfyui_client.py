"""The ComfyUI client: the WebSocket is open before POST /prompt, history is the truth.

HTTP-only behaviour is tested with aioresponses; the orderings a real server will not produce on
demand (events before the POST answers, a dropped or silent socket) with the scripted FakeComfyUI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from plasmad.comfy.client import ComfyClient, ImageRef
from plasmad.core.errors import ErrorCode, PlasmaError
from tests.aioresponses_compat import mocked_http
from tests.fakes.fake_comfyui import FakeComfyUI


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeComfyUI, ComfyClient]]:
    peer = FakeComfyUI()
    server = TestServer(peer.app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield peer, ComfyClient(str(server.make_url("")).rstrip("/"), session, history_poll_s=0.05)
    await server.close()


async def run(client: ComfyClient, steps: list[tuple[int, int]], prompt_id: str = "p-1") -> list[ImageRef]:
    async def on_progress(step: int, total: int) -> None:
        steps.append((step, total))

    return await client.run({"1": {"inputs": {}, "class_type": "X"}}, prompt_id, on_progress, timeout=10)


@pytest.mark.parametrize("scenario", ["fast", "normal", "drop", "silent"])
async def test_every_ordering_ends_with_the_image(
    fake: tuple[FakeComfyUI, ComfyClient], scenario: str
) -> None:
    peer, client = fake
    peer.scenario = scenario
    steps: list[tuple[int, int]] = []
    images = await run(client, steps)
    assert images == [ImageRef("p-1.png", "", "output")]
    # Our own prompt id and a client id went with the prompt, the socket was open before it.
    assert peer.prompts[0]["prompt_id"] == "p-1"
    assert peer.prompts[0]["client_id"] in peer.sockets
    if scenario in ("fast", "normal"):
        assert steps == [(1, 2), (2, 2)]
    if scenario == "drop":
        assert steps == [(1, 2)]


async def test_execution_error_fails_with_comfyuis_message(fake: tuple[FakeComfyUI, ComfyClient]) -> None:
    peer, client = fake
    peer.scenario = "error"
    with pytest.raises(PlasmaError) as err:
        await run(client, [])
    assert err.value.code == ErrorCode.COMFYUI_REJECTED
    assert "KSampler" in err.value.message and "boom" in err.value.message


async def test_node_errors_fail_with_the_nodes_message(fake: tuple[FakeComfyUI, ComfyClient]) -> None:
    peer, client = fake
    peer.scenario = "reject"
    with pytest.raises(PlasmaError) as err:
        await run(client, [])
    assert err.value.code == ErrorCode.COMFYUI_REJECTED
    assert "CheckpointLoaderSimple" in err.value.message and "ckpt_name" in err.value.message


async def test_interrupt_ends_a_hanging_prompt(fake: tuple[FakeComfyUI, ComfyClient]) -> None:
    import asyncio

    peer, client = fake
    peer.scenario = "hang"
    task = asyncio.create_task(run(client, [], "p-hang"))
    await asyncio.sleep(0.2)
    assert await client.in_queue("p-hang")
    await client.interrupt("p-hang")
    with pytest.raises(PlasmaError, match="interrupted"):
        await task
    assert peer.interrupted == ["p-hang"] and peer.deleted == ["p-hang"]


async def test_timeout_is_reported(fake: tuple[FakeComfyUI, ComfyClient]) -> None:
    peer, client = fake
    peer.scenario = "hang"

    async def on_progress(step: int, total: int) -> None:
        pass

    with pytest.raises(PlasmaError, match="did not finish"):
        await client.run({}, "p-slow", on_progress, timeout=0.3)


async def test_unreachable_comfyui_is_unavailable() -> None:
    async with aiohttp.ClientSession() as session:
        client = ComfyClient("http://127.0.0.1:9", session)
        with pytest.raises(PlasmaError) as err:
            await client.system_stats()
    assert err.value.code == ErrorCode.COMFYUI_UNAVAILABLE


async def test_http_answers_with_aioresponses() -> None:
    base = "http://comfy.test:8188"
    with mocked_http() as mocked:
        mocked.get(
            f"{base}/object_info/KSampler",
            payload={
                "KSampler": {
                    "input": {
                        "required": {
                            "sampler_name": [["euler", "euler_ancestral"]],
                            "scheduler": ["COMBO", {"options": ["normal"]}],
                        }
                    }
                }
            },
        )
        mocked.get(
            f"{base}/history/abc",
            payload={
                "abc": {
                    "status": {"status_str": "success", "completed": True, "messages": []},
                    "outputs": {
                        "9": {
                            "images": [
                                {"filename": "a.png", "subfolder": "plasma", "type": "output"},
                                {"filename": "t.png", "subfolder": "", "type": "temp"},
                            ]
                        }
                    },
                }
            },
        )
        mocked.get(f"{base}/history/none", payload={})
        mocked.get(f"{base}/system_stats", status=500, body="oops")
        async with aiohttp.ClientSession() as session:
            client = ComfyClient(base, session)
            assert await client.input_choices("KSampler", "sampler_name") == ["euler", "euler_ancestral"]
            # Cached: the second call makes no request (aioresponses would raise).
            assert await client.input_choices("KSampler", "scheduler") == ["normal"]
            entry = await client.history("abc")
            assert entry is not None
            from plasmad.comfy.answers import outcome

            assert outcome("abc", entry) == [ImageRef("a.png", "plasma", "output")]
            assert await client.history("none") is None
            with pytest.raises(PlasmaError) as err:
                await client.system_stats()
            assert err.value.code == ErrorCode.COMFYUI_UNAVAILABLE
