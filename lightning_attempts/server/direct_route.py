"""The hot routes' class: documented by FastAPI as usual, served without its per-request machinery.

Every worker calls ``GET /task`` and ``POST /rollout`` in a loop. For each request,
FastAPI solves the endpoint's dependencies, decodes the JSON body with ``json.loads``,
validates the result and wraps the call; for these small endpoints that is most of the
server's own CPU (see benchmarks/). ``DirectRoute`` keeps everything FastAPI derives from
the endpoint's signature (the OpenAPI schema, ``/docs``), and serves a request by
validating the body straight from its bytes with pydantic-core and awaiting the endpoint,
which returns a ready ``Response``. Bad bodies get FastAPI's 422 shape; a body larger
than the route's ``max_body_bytes`` gets 413 and is not read further; a route's ``precheck`` may
refuse a body before it is parsed.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ClassVar

from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..options import DEFAULTS

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
Precheck = Callable[[bytes], Response | None]
"""A look at a body's bytes before it is parsed: the answer refusing it, or None to go on."""


def unprocessable(errors: Sequence[Any], *, prefix: tuple[str, ...] = ()) -> JSONResponse:
    """422 naming each bad field, without echoing the input back (it may be huge or private)."""
    detail = [{"type": e.get("type"), "loc": [*prefix, *e.get("loc", ())], "msg": e.get("msg")} for e in errors]
    return JSONResponse({"detail": detail}, status_code=422)


class BodyTooLarge(Exception):
    """A request body over the route's limit; answered 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body larger than {limit} bytes, this server's max_body_bytes.")


async def read_body(request: Request, limit: int | None) -> bytes:
    """The request's body; ``BodyTooLarge`` as soon as it is known to exceed ``limit`` bytes."""
    if limit is None:
        return await request.body()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # a chunked body declares no length
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class DirectRoute(APIRoute):
    """An ``APIRoute`` for an endpoint taking nothing, the ``Request``, or one pydantic body (and then, if it asks,
    the ``Request``), returning a Response."""

    max_body_bytes: ClassVar[int | None] = DEFAULTS.max_body_bytes
    """Bodies over this many bytes are answered 413, read no further than the limit; ``None``: no limit."""
    prechecks: ClassVar[tuple[Precheck, ...]] = ()
    """Each called with the body's bytes before it is parsed; the first answer one returns (not None) is sent."""

    @classmethod
    def limited(cls, max_body_bytes: int | None, precheck: Precheck | None = None) -> type[DirectRoute]:
        """This route class with another body limit, and ``precheck``."""
        prechecks = () if precheck is None else (precheck,)
        return type(cls.__name__, (cls,), {"max_body_bytes": max_body_bytes, "prechecks": prechecks})

    def get_route_handler(self) -> Handler:
        endpoint: Callable[..., Coroutine[Any, Any, Response]] = self.endpoint
        parameters = list(inspect.signature(endpoint).parameters)
        if not parameters:

            async def handler(request: Request) -> Response:
                return await endpoint()

            return handler
        hints = typing.get_type_hints(endpoint)
        with_request = len(parameters) == 2 and hints[parameters[1]] is Request
        if len(parameters) > 2 or (len(parameters) == 2 and not with_request):
            raise TypeError(
                f"DirectRoute takes endpoints with a body parameter and the Request at most, not {parameters}"
            )
        annotation = hints[parameters[0]]
        if annotation is Request:

            async def handler_with_request(request: Request) -> Response:
                return await endpoint(request)

            return handler_with_request
        body: type[BaseModel] = annotation
        limit, prechecks = self.max_body_bytes, self.prechecks

        async def handler_with_body(request: Request) -> Response:
            try:
                raw = await read_body(request, limit)
                for precheck in prechecks:
                    if (refused := precheck(raw)) is not None:
                        return refused
                payload = body.model_validate_json(raw)
            except BodyTooLarge as exc:
                return JSONResponse({"detail": str(exc)}, status_code=413)
            except ValidationError as exc:
                return unprocessable(exc.errors(include_input=False, include_url=False), prefix=("body",))
            return await (endpoint(payload, request) if with_request else endpoint(payload))

        return handler_with_body
