"""Per-process resources (DB engine, queue client), created lazily after the worker forks."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from api.db.base import make_engine, make_session_factory
from api.queue import CeleryQueue, TaskQueue
from api.settings import Settings

__all__ = ["Runtime", "get_runtime"]


@dataclass
class Runtime:
    pid: int
    session_factory: sessionmaker[Session]
    queue: TaskQueue


_runtime: Runtime | None = None


def get_runtime(settings: Settings) -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        # A job process needs two connections at most: the job's and the heartbeat thread's.
        small = {} if settings.database_url.startswith("sqlite") else {"pool_size": 2}
        engine = make_engine(settings.database_url, max_overflow=2, **small)
        _runtime = Runtime(os.getpid(), make_session_factory(engine), CeleryQueue(settings))
    return _runtime
