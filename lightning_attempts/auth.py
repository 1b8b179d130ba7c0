"""API keys as agentlightning 1.0 checks them: ``Authorization: Bearer <key>`` or ``x-api-key: <key>``.

``ApiKeyMiddleware`` is a pure ASGI middleware around the whole application, so every
route, including ``/docs``, ``/openapi.json``, unknown paths and any route added later,
answers 401 without the key, before routing and before any body is read. The key is
compared in constant time; a refusal is logged with the route and the peer, never with
what was presented: once per peer and route, then in a summary with counts every minute
(``RefusalLog``), as an old worker polling a keyed server would otherwise fill the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from .keys import COOKIE, KeyCheck, carries_a_key

logger = logging.getLogger(__name__)

_BODY = b'{"detail":"Invalid or missing API key"}'  # 1.0's words
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"www-authenticate", b"Bearer"),
]

BROWSER_READS = (
    *("/dashboard", "/dashboard/summary", "/metrics"),
    *("/", "/rollouts", "/resources", "/traces", "/runners", "/settings"),  # agentlightning 0.3.0's own page
)
"""Where a GET may present the key in the dashboard's cookie instead of a header, with ``BROWSER_READ_PREFIXES``:
read-only routes, so that a browser, which cannot set headers on a page it opens, can read the run."""
BROWSER_READ_PREFIXES = ("/attempts/", "/v1/agl/", "/assets/")
_LOGIN_MAX_AGE = 7 * 24 * 3600
_HTML_401 = (
    b"<!doctype html><title>401: API key needed</title><p>This server requires its API key.</p>"
    b'<form method="post" action="%s"><input type="password" name="key" placeholder="API key" '
    b"autofocus> <button>Open the dashboard</button></form><p>The browser then keeps it in a cookie for this "
    b"server (<code>/dashboard?key=...</code> does the same, but leaves the key in the access log).</p>"
)
_LOGIN_FORMS = {"/dashboard": _HTML_401 % b"dashboard/login", "/dashboard/login": _HTML_401 % b"login"}
"""The 401 page a browser gets at each, its form posting to ``LOGIN_PATH`` (relative: behind a path prefix too)."""
LOGIN_PATH = "/dashboard/login"
"""``POST`` a form with ``key``: the cookie, as ``/dashboard?key=`` gives it, without the key in any URL or log."""
MAX_LOGIN_BYTES = 4096
"""The most of a login form's body read; a longer one is refused."""


def _browser_read(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] in ("GET", "HEAD") and (path in BROWSER_READS or path.startswith(BROWSER_READ_PREFIXES))


def _wants_html(scope: Scope) -> bool:
    return any(name == b"accept" and b"text/html" in value for name, value in scope["headers"])


Schedule = Callable[[float, Callable[[], None]], Any]
"""``schedule(delay, callback)``: call ``callback`` in ``delay`` seconds (``loop.call_later``'s shape)."""

SUMMARY_SECONDS = 60.0
MAX_REMEMBERED_ROUTES = 1024
"""Peer and route pairs remembered as already logged (the oldest forgotten first); also the most summarised."""
MAX_FIRST_LINES = 10
"""Lines for first refusals between two summaries; a scanner's new paths beyond them are only counted."""
_SHOWN_IN_SUMMARY = 5


def _call_later_on_running_loop(delay: float, callback: Callable[[], None]) -> Any:
    return asyncio.get_running_loop().call_later(delay, callback)


class RefusalLog:
    """Log a refused request once per peer and route, then the later ones as a count every ``interval`` seconds.

    ``refused`` logs the first refusal of a peer (its address, without the port) on a route
    (method and path) at WARNING; later ones are counted, and ``flush`` logs them in one
    WARNING line, the most frequent first. The first counted refusal after a flush asks
    ``schedule`` to flush ``interval`` seconds later, so nothing is scheduled while no one
    is refused. Bounded: at most ``max_routes`` pairs are remembered and counted by name,
    and at most ``max_first_lines`` first refusals are logged between two summaries (a
    scanner trying paths is counted, not logged path by path).
    """

    def __init__(
        self,
        interval: float = SUMMARY_SECONDS,
        schedule: Schedule = _call_later_on_running_loop,
        max_routes: int = MAX_REMEMBERED_ROUTES,
        max_first_lines: int = MAX_FIRST_LINES,
    ) -> None:
        self.interval = interval
        self._schedule = schedule
        self._max_routes = max_routes
        self._max_first_lines = max_first_lines
        self._first_lines = 0
        self._logged: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._uncounted = 0  # refusals beyond max_routes distinct pairs in one interval
        self._scheduled = False

    def refused(self, peer: str, method: str, path: str, presented: bool) -> None:
        """A request from ``peer`` to ``method path`` was refused; ``presented``: it carried a (wrong) key."""
        route = (peer, method, path)
        first = route not in self._logged
        if first:
            self._logged[route] = None
            if len(self._logged) > self._max_routes:
                self._logged.popitem(last=False)
        if first and self._first_lines < self._max_first_lines:
            self._first_lines += 1
            logger.warning(
                "Refused %s %r from %s: %s API key (401); further refusals from this peer on this route are "
                "summarised every %gs",  # %r: a decoded path may hold a newline
                method,
                path,
                peer,
                "wrong" if presented else "no",
                self.interval,
            )
            return
        if route in self._counts or len(self._counts) < self._max_routes:
            self._counts[route] += 1
        else:
            self._uncounted += 1
        if not self._scheduled:
            self._scheduled = True
            self._schedule(self.interval, self.flush)

    def flush(self) -> None:
        """Log the refusals counted since the last flush, if any, in one line."""
        self._scheduled = False
        self._first_lines = 0
        counts, self._counts = self._counts, Counter()
        uncounted, self._uncounted = self._uncounted, 0
        total = sum(counts.values()) + uncounted
        if not total:
            return
        top = counts.most_common(_SHOWN_IN_SUMMARY)
        shown = [f"{method} {path!r} from {peer} x{n}" for (peer, method, path), n in top]
        others = total - sum(n for _, n in top)
        logger.warning(
            "Refused %d more request(s) without a valid API key (401) in the last %gs: %s%s",
            total,
            self.interval,
            ", ".join(shown) if shown else "",
            f" and {others} more" if others else "",
        )


class ApiKeyMiddleware:
    """Answer 401 (``WWW-Authenticate: Bearer``) to any HTTP request without ``key``; count and log it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        key: str,
        on_refused: Callable[[], None] = lambda: None,
        refusals: RefusalLog | None = None,
    ) -> None:
        self.app = app
        self._key = KeyCheck(key)
        self._key_text = key
        self._on_refused = on_refused
        self.refusals = RefusalLog() if refusals is None else refusals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._key.presented(scope["headers"]):
            await self.app(scope, receive, send)
            return
        if _browser_read(scope):
            if self._key.in_cookie(scope["headers"]):
                await self.app(scope, receive, send)
                return
            if scope["path"] == "/dashboard" and self._login(scope):
                await _send_login(send, self._key_text, b"dashboard")
                return
        elif scope["method"] == "POST" and scope["path"] == LOGIN_PATH:
            key = await _form_key(receive)
            if key is not None and self._key.matches(key):
                await _send_login(send, self._key_text, b"../dashboard")
                return
        self._refuse(scope)
        form = _LOGIN_FORMS.get(scope["path"])
        if form is not None and _wants_html(scope):  # a person: the login form
            html = [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(form)).encode()),
                (b"www-authenticate", b"Bearer"),
            ]
            await send({"type": "http.response.start", "status": 401, "headers": html})
            await send({"type": "http.response.body", "body": form})
            return
        await send({"type": "http.response.start", "status": 401, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": _BODY})

    def _login(self, scope: Scope) -> bool:
        """Whether ``/dashboard?key=...`` carries the key (the browser is then given the cookie)."""
        query: bytes = scope.get("query_string", b"")
        if b"key=" not in query:
            return False
        keys = parse_qs(query.decode("latin-1")).get("key", [])
        return len(keys) == 1 and self._key.matches(keys[0].encode("latin-1"))

    def _refuse(self, scope: Scope) -> None:
        client = scope.get("client")
        peer = str(client[0]) if client else "unknown peer"  # not the port: each connection has its own
        self.refusals.refused(peer, scope["method"], scope["path"], carries_a_key(scope["headers"]))
        self._on_refused()


async def _form_key(receive: Receive) -> bytes | None:
    """The ``key`` of a login form's body (``application/x-www-form-urlencoded``); None if absent or too long."""
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        if len(body) > MAX_LOGIN_BYTES:
            return None
        if not message.get("more_body", False):
            break
    keys = parse_qs(body.decode("latin-1")).get("key", [])
    return keys[0].encode("latin-1") if len(keys) == 1 else None


async def _send_login(send: Send, key: str, location: bytes) -> None:
    """303 to ``/dashboard`` (``location``, relative: behind a proxy's path prefix too), setting the key's cookie:
    the key leaves the address bar and the history."""
    cookie = f"{COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict; Max-Age={_LOGIN_MAX_AGE}"
    headers = [(b"location", location), (b"set-cookie", cookie.encode()), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
