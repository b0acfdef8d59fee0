"""A real ``lanetrace mcp`` subprocess driven by the MCP SDK's own client over
stdio, usable from synchronous tests: the client lives on an event loop in a
background thread for as long as the session is open."""
from __future__ import annotations

import asyncio
import os
import sys
import threading
from dataclasses import dataclass

from mcp import Client, StdioServerParameters

CALL_TIMEOUT = 600


@dataclass
class ToolAnswer:
    is_error: bool
    text: str
    structured: dict | None


class McpSession:
    def __init__(self, trace_root, *extra, mode="auto"):
        self.params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "lanetrace", "mcp", "--trace-root", str(trace_root), *extra],
            env=dict(os.environ))
        self.mode = mode  # "legacy": the initialize handshake of pre-2026 hosts
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._stop = None
        self.client = self._run(self._open())

    def _run(self, coro, timeout=CALL_TIMEOUT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self):
        ready = asyncio.Event()
        self._stop = asyncio.Event()
        holder = {}

        async def hold():
            try:
                async with Client(self.params, mode=self.mode) as c:
                    holder["client"] = c
                    ready.set()
                    await self._stop.wait()
            except BaseException as exc:  # noqa: BLE001 - reported to the opener
                holder["error"] = exc
                ready.set()

        self._task = asyncio.ensure_future(hold())
        await ready.wait()
        if "error" in holder:
            raise holder["error"]
        return holder["client"]

    def tools(self) -> list:
        return self._run(self.client.list_tools()).tools

    def call(self, name: str, args: dict | None = None) -> ToolAnswer:
        async def go():
            return await self.client.call_tool(name, args or {}, read_timeout_seconds=CALL_TIMEOUT)

        r = self._run(go())
        text = "".join(getattr(c, "text", "") for c in r.content)
        return ToolAnswer(bool(r.is_error), text, r.structured_content)

    def close(self):
        async def stop():
            self._stop.set()
            await self._task

        try:
            self._run(stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
