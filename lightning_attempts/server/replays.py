"""The producer routes' replays: the answer a request with a ``request_id`` got, for its repeat.

A client that lost an answer (the connection dropped after the server acted) sends the request
again with the same ``request_id``; the route answers it as the first time and changes nothing.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from starlette.responses import Response

from ..store import AttemptAwareDataStore

logger = logging.getLogger(__package__)  # "lightning_attempts.server"

REPLAYED = 32
"""Successful answers remembered by ``request_id`` (per run): a retry follows its request closely."""


class Replays:
    """The answers of the last successful requests by ``request_id``, for the run whose store made them."""

    def __init__(self) -> None:
        self._answers: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._run: weakref.ref[AttemptAwareDataStore] | None = None

    async def once(
        self, store: AttemptAwareDataStore, route: str, request_id: str | None, act: Callable[[], Awaitable[Response]]
    ) -> Response:
        """``act()``'s answer, or the answer it gave a request of this run with the same id."""
        if request_id is None:
            return await act()
        if self._run is None or self._run() is not store:
            self._answers.clear()
            self._run = weakref.ref(store)
        key = (route, request_id)
        earlier = self._answers.get(key)
        if earlier is not None:
            logger.info("%s: request %r repeated; answered as the first time, nothing changed", route, request_id)
            return Response(earlier, media_type="application/json")
        # act() does not suspend (the store's awaited methods take uncontended locks), and a client
        # retries only once it lost the first answer: no two requests with one id act together.
        response = await act()
        if response.status_code == 200:
            self._answers[key] = bytes(response.body)
            while len(self._answers) > REPLAYED:
                self._answers.popitem(last=False)
        return response
