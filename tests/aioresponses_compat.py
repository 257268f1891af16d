"""aioresponses 0.7.9 predates aiohttp 3.14, whose ClientResponse takes a `stream_writer`
(aioresponses issue #289, open). aiohttp 3.14 is a security release, so we keep it and give
aioresponses a response class that supplies the argument."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiohttp import ClientResponse
from aioresponses import aioresponses


class _Response(ClientResponse):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


class mocked_http(aioresponses):
    def add(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("response_class", _Response)
        super().add(*args, **kwargs)
