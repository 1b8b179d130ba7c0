"""Serving an ``LlmProxy`` with uvicorn on the running event loop (the daemon's, shared with its task server).

``ProxyServer.start()`` binds first (a port in use raises ``ServerStartError`` at once),
returns once uvicorn serves, and ``stop()`` returns once it has shut down and the
connections to the backends are closed. uvicorn's logging setup and access log are off:
the process keeps its own logging, and an access log line would hold attempt ids, which are
capabilities. A backend that cut an answer short is logged by the proxy in one WARNING line;
uvicorn's traceback of the ``BackendCut`` that drops the client's connection is left out.
"""

from __future__ import annotations

import importlib.util
import logging

import uvicorn
from starlette.types import ASGIApp

from ..hosts import is_loopback_host
from ..server.lifecycle import Serving
from .app import BackendCut, LlmProxy

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 30.0
"""How long a worker's idle connection to the proxy is kept (uvicorn's default is 5 s)."""


class _QuietBackendCuts(logging.Filter):
    """Leave out uvicorn's "Exception in ASGI application" for a ``BackendCut`` (already logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info is not None and isinstance(record.exc_info[1], BackendCut))


_QUIET_BACKEND_CUTS = _QuietBackendCuts()


class ProxyServer:
    """One ``LlmProxy`` served on ``host:port`` (0: a free port) from ``start()`` until ``stop()``."""

    def __init__(self, proxy: LlmProxy, host: str = "127.0.0.1", port: int = 0, *, app: ASGIApp | None = None) -> None:
        """``app``: what to serve, when not the proxy itself (the proxy inside a middleware, say)."""
        self.proxy = proxy
        self.host = host
        self.port = port
        """The bound port once ``start()`` returned."""
        http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
        config = uvicorn.Config(
            proxy if app is None else app,
            host=host,
            port=port,
            http=http,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,  # the backend's own Server and Date pass through
            date_header=False,
            timeout_keep_alive=int(KEEPALIVE_SECONDS),
        )
        self._serving = Serving(config, on_shutdown=lambda: None)
        logging.getLogger("uvicorn.error").addFilter(_QUIET_BACKEND_CUTS)  # once: the same filter is not added twice

    @property
    def endpoint(self) -> str:
        """``http://host:port``, the URL workers' ``/v1`` (and attempt-scoped URLs) hang off."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        """Bind and serve; return once serving. Raises ``ServerStartError`` when it cannot."""
        self.port = self._serving.bind(self.host, self.port)
        address = f"{self.host}:{self.port}"
        if not await self._serving.start(timeout, endpoint=self.endpoint, address=address):
            raise TimeoutError(f"LLM proxy on {address} did not start within {timeout} s")
        if not self.proxy.requires_key and not is_loopback_host(self.host):
            logger.warning(
                "LLM proxy on %s has no API key: anyone who reaches it can use the LLM backends through /v1. "
                "Set AGL_KEY (or the server's api_key) for the daemon to pass it.",
                address,
            )
        logger.info("LLM proxy serving on %s", address)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop serving (calls still open are cut after ``timeout`` seconds) and close the backend connections."""
        await self._serving.stop(timeout)
        await self.proxy.aclose()


async def serve_proxy(
    proxy: LlmProxy, host: str = "127.0.0.1", port: int = 0, *, app: ASGIApp | None = None
) -> ProxyServer:
    """Start ``proxy`` (or ``app`` around it) on ``host:port`` in the running loop; ``await server.stop()`` ends it."""
    server = ProxyServer(proxy, host, port, app=app)
    await server.start()
    return server
