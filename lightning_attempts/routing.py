"""The hot routes' class: documented by FastAPI as usual, served without its per-request machinery.

Every worker calls ``GET /task`` and ``POST /rollout`` in a loop. For each request,
FastAPI solves the endpoint's dependencies, decodes the JSON body with ``json.loads``,
validates the result and wraps the call; for these small endpoints that is most of the
server's own CPU (see benchmarks/). ``DirectRoute`` keeps everything FastAPI derives from
the endpoint's signature (the OpenAPI schema, ``/docs``), and serves a request by
validating the body straight from its bytes with pydantic-core and awaiting the endpoint,
which returns a ready ``Response``. Bad bodies get FastAPI's 422 shape.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def unprocessable(errors: Sequence[Any], *, prefix: tuple[str, ...] = ()) -> JSONResponse:
    """422 naming each bad field, without echoing the input back (it may be huge or private)."""
    detail = [{"type": e.get("type"), "loc": [*prefix, *e.get("loc", ())], "msg": e.get("msg")} for e in errors]
    return JSONResponse({"detail": detail}, status_code=422)


class DirectRoute(APIRoute):
    """An ``APIRoute`` for an endpoint taking no argument or one pydantic body, returning a Response."""

    def get_route_handler(self) -> Handler:
        endpoint: Callable[..., Coroutine[Any, Any, Response]] = self.endpoint
        parameters = list(inspect.signature(endpoint).parameters)
        if not parameters:

            async def handler(request: Request) -> Response:
                return await endpoint()

            return handler
        if len(parameters) > 1:
            raise TypeError(f"DirectRoute takes endpoints with at most one (body) parameter, not {parameters}")
        body: type[BaseModel] = typing.get_type_hints(endpoint)[parameters[0]]

        async def handler_with_body(request: Request) -> Response:
            try:
                payload = body.model_validate_json(await request.body())
            except ValidationError as exc:
                return unprocessable(exc.errors(include_input=False, include_url=False), prefix=("body",))
            return await endpoint(payload)

        return handler_with_body
