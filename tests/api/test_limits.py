"""The in-flight request limit: excess requests wait (no thread, no DB connection), none fail."""

from __future__ import annotations

import asyncio

from starlette.types import Receive, Scope, Send

from api.limits import ConcurrencyLimitMiddleware


def test_concurrency_limit_caps_in_flight_requests_and_lets_all_finish() -> None:
    in_flight = 0
    peak = 0
    done = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal in_flight, peak, done
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        done += 1

    mw = ConcurrencyLimitMiddleware(app, limit=3)

    async def noop_receive() -> dict[str, object]:
        return {}

    async def noop_send(message: object) -> None:
        return None

    async def main() -> None:
        scopes = [{"type": "http", "path": f"/api/v1/jobs/{i}"} for i in range(20)]
        scopes += [{"type": "http", "path": "/api/v1/jobs/x/events"}] * 5  # bypass the limit
        await asyncio.gather(*(mw(s, noop_receive, noop_send) for s in scopes))  # type: ignore[arg-type]

    asyncio.run(main())
    assert done == 25
    assert peak <= 3 + 5
    # Without the event streams the cap holds exactly (a fresh middleware: a new event loop).
    peak = 0
    mw = ConcurrencyLimitMiddleware(app, limit=3)

    async def only_jobs() -> None:
        scopes = [{"type": "http", "path": f"/api/v1/jobs/{i}"} for i in range(20)]
        calls = (mw(s, noop_receive, noop_send) for s in scopes)  # type: ignore[arg-type]
        await asyncio.wait_for(asyncio.gather(*calls), timeout=10)

    asyncio.run(only_jobs())
    assert peak == 3
