"""An LLM proxy in a process of its own, for its memory to be measured: every attempt unknown, no backend.

python -m tests.llm_proxy.proxy_process    # prints its port, serves until its stdin closes
"""

from __future__ import annotations

import asyncio
import sys

from lightning_attempts.llm_proxy import LlmProxy, serve_proxy


async def main() -> None:
    server = await serve_proxy(LlmProxy(lambda: [], lambda rollout_id, attempt_id: "unknown_attempt"))
    print(server.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
