"""The asyncio Protocol echo on uvloop (libuv, Cython): same protocol, a different loop."""

from __future__ import annotations

import asyncio

from servers.asyncio_server import AsyncioServer


class UvloopServer(AsyncioServer):
    name = "uvloop"
    category = "I/O multiplexing (event loop)"
    mechanism = "asyncio Protocol on uvloop (libuv epoll loop in Cython); transport.write buffers"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import uvloop  # noqa: F401
        except ImportError as exc:
            return f"uvloop cannot be imported: {exc}"
        return None

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        import uvloop

        return uvloop.new_event_loop()
