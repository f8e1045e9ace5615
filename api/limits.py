"""``ConcurrencyLimitMiddleware``: bound the requests in flight so the DB pool never deadlocks.

A pure ASGI middleware (no ``BaseHTTPMiddleware``: streaming stays streaming). Health checks,
static files and the event streams bypass it: an event stream lives for a whole job and only
borrows a connection for a moment on each poll.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ConcurrencyLimitMiddleware"]

_BYPASS_PREFIXES = ("/static/", "/healthz", "/readyz")


class ConcurrencyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._semaphore: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(_BYPASS_PREFIXES) or path.endswith("/events"):
            await self.app(scope, receive, send)
            return
        if self._semaphore is None:  # created inside the running loop
            self._semaphore = asyncio.Semaphore(self.limit)
        async with self._semaphore:
            await self.app(scope, receive, send)
