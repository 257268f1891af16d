"""The API's contract, declared once: each HTTP route and each JSON-RPC method with its models.

`plasmad.api.http` serves the routes that `plasmad.api.routes` declares with these, `plasmad.api.rpc`
the methods, and `plasmad.api.openapi` writes the same declarations out as `GET /openapi.json`; so a
route cannot be served without being in the spec, nor be in the spec without being served
(tests/test_contract.py compares aiohttp's router with the document).

To add a route: write its view in its area's module of `plasmad.api.routes`, give its request and
answer models in `plasmad.core.wire` (with an example), and add one `Route(...)` line to that
module's `routes()`. The error statuses every route of its shape can answer (the guard's 403, a
body's 400/413/415, a path id's 404, a bug's 500) are added for you; name the others in `errors`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel

if TYPE_CHECKING:
    from plasmad.api.service import Service

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RpcCall = Callable[["Service", dict[str, Any]], Awaitable[Any]]

JSON = "application/json"
EVENT_STREAM = "text/event-stream"

SUBMITS = (409, 503)  # a staged file in the way; ComfyUI, a setting or the daemon (stopping) missing


@dataclass(frozen=True)
class Header:
    """A request header a route reads (documented as a header parameter)."""

    name: str
    description: str


@dataclass(frozen=True)
class Route:
    """One HTTP route: served by `http.create_app`, described by `openapi.build`."""

    method: str  #: GET | POST
    path: str  #: aiohttp's spelling: /jobs/{id}
    handler: Handler
    #: The success body (for a stream: the model of each event's data); None: a file of `media_type`.
    response: type[BaseModel] | None
    summary: str
    status: int = 200
    also: tuple[int, ...] = ()  #: more success statuses, same body (200 for "nothing new queued")
    body: type[BaseModel] | None = None  #: the JSON request body
    query: type[BaseModel] | None = None  #: the query string's parameters
    headers: tuple[Header, ...] = ()
    errors: tuple[int, ...] = ()  #: statuses besides those `error_statuses` adds
    rpc: str | None = None  #: the JSON-RPC method that does the same
    media_type: str = JSON  #: of the success answer
    tag: str = "jobs"
    description: str | None = None

    def route_def(self) -> web.RouteDef:
        return web.route(self.method, self.path, self.handler)

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{") and part.endswith("}")]

    def error_statuses(self) -> list[int]:
        """Every error status this route can answer: its own, and those of its shape."""
        statuses = {403, 500, *self.errors}  # the guard (Host, Origin); a bug
        if self.method != "GET":
            statuses |= {415}  # the guard: a body that is not JSON
        if self.body is not None:
            statuses |= {400, 413}  # a wrong or too large body
        if self.query is not None:
            statuses |= {400}
        if self.path_params:
            statuses |= {400, 404}  # a malformed id or name (the guard's checks); none of that name
        return sorted(statuses)


@dataclass(frozen=True)
class RpcMethod:
    """One JSON-RPC method of the socket API: dispatched by `rpc.build_methods`, listed in the spec
    (`x-jsonrpc-methods`) with the same models as its HTTP route."""

    name: str
    call: RpcCall | None  #: None: the daemon provides it (`shutdown`)
    result: type[BaseModel]
    summary: str
    params: type[BaseModel] | None = None
