"""The producer routes' replays: the answer a request with a ``request_id`` got, for its repeat.

A client that lost an answer (the connection dropped after the server acted) sends the request
again with the same ``request_id``; the route answers it as the first time and changes nothing.
An answer is kept while it is among the last ``REPLAYED`` and the answers kept take at most
``REPLAY_BYTES`` in all (a take's answer is a whole batch of results). Once its answer is dropped,
the id is still remembered (the last ``REMEMBERED_IDS``): a repeat then gets 409 rather than acting
twice, e.g. queueing the batch again or coming back empty-handed from a take.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from starlette.responses import JSONResponse, Response

from ..store import AttemptAwareDataStore

logger = logging.getLogger(__package__)  # "lightning_attempts.server"

REPLAYED = 32
"""Successful answers kept by ``request_id`` (per run), the latest: a retry follows its request closely."""
REPLAY_BYTES = 64 * 2**20
"""The bytes the kept answers take in all (64 MiB); an answer larger than that is not kept."""
REMEMBERED_IDS = 4096
"""Request ids remembered (per run) after their answer is dropped: a repeat is refused (409), not acted on."""

Key = tuple[str, str]  # (route, request_id)


class Replays:
    """The answers of the last successful requests by ``request_id``, for the run whose store made them."""

    def __init__(self) -> None:
        self._answers: OrderedDict[Key, bytes] = OrderedDict()
        self._answered: OrderedDict[Key, int] = OrderedDict()  # each id answered: its answer's size
        self._bytes = 0  # of the answers kept
        self._run: weakref.ref[AttemptAwareDataStore] | None = None

    async def once(
        self, store: AttemptAwareDataStore, route: str, request_id: str | None, act: Callable[[], Awaitable[Response]]
    ) -> Response:
        """``act()``'s answer, or the answer it gave a request of this run with the same id (409 if not kept)."""
        if request_id is None:
            return await act()
        if self._run is None or self._run() is not store:
            self._answers.clear()
            self._answered.clear()
            self._bytes = 0
            self._run = weakref.ref(store)
        key = (route, request_id)
        earlier = self._answers.get(key)
        if earlier is not None:
            logger.info("%s: request %r repeated; answered as the first time, nothing changed", route, request_id)
            return Response(earlier, media_type="application/json")
        size = self._answered.get(key)
        if size is not None:
            logger.warning("%s: request %r repeated; its answer (%d bytes) is no longer kept", route, request_id, size)
            detail = (
                f"Request {request_id!r} was answered already; its answer ({size} bytes) is no longer kept "
                f"(the server keeps the last {REPLAYED} answers within {REPLAY_BYTES} bytes). Nothing changed."
            )
            return JSONResponse({"detail": detail}, status_code=409)
        # act() does not suspend (the store's awaited methods take uncontended locks), and a client
        # retries only once it lost the first answer: no two requests with one id act together.
        response = await act()
        if response.status_code == 200:
            self._keep(key, bytes(response.body))
        return response

    def _keep(self, key: Key, answer: bytes) -> None:
        """Remember ``key``'s answer; drop the oldest answers beyond the bounds, and the oldest ids."""
        self._answered[key] = len(answer)
        while len(self._answered) > REMEMBERED_IDS:
            self._drop(self._answered.popitem(last=False)[0])
        if len(answer) > REPLAY_BYTES:
            logger.info("%s: the answer to %r (%d bytes) is too large to keep for a replay", *key, len(answer))
            return
        self._answers[key] = answer
        self._bytes += len(answer)
        while len(self._answers) > REPLAYED or self._bytes > REPLAY_BYTES:
            self._drop(next(iter(self._answers)))

    def _drop(self, key: Key) -> None:
        answer = self._answers.pop(key, None)
        if answer is not None:
            self._bytes -= len(answer)
