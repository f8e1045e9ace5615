"""Sending jobs to workers by task name: the API never imports worker code.

``CeleryQueue.send`` is called only after the job row is committed. If the broker is down the row
stays ``queued`` and the sweeper re-sends it.
"""

from __future__ import annotations

import logging
from typing import Protocol

from celery import Celery

from api.settings import Settings

__all__ = ["TASK_NAMES", "CeleryQueue", "FakeQueue", "TaskQueue", "queue_for_device"]

log = logging.getLogger(__name__)

TASK_NAMES = {"train": "train.run", "distill": "distill.run", "eval": "eval.run"}


def queue_for_device(settings: Settings, device: str) -> str:
    """``cpu`` jobs go to the CPU queue; ``cuda`` and ``auto`` to the GPU queue."""
    return settings.cpu_queue if device == "cpu" else settings.gpu_queue


class TaskQueue(Protocol):
    def send(self, task_name: str, job_id: str, *, queue: str) -> None: ...

    def depth(self, queue: str) -> int | None: ...

    def ping(self) -> bool: ...


class CeleryQueue:
    """A producer-only Celery app (no tasks registered, no result backend)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = Celery("bmgkd-producer", broker=settings.broker_url)
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            result_backend=None,
            task_ignore_result=True,
            broker_connection_retry_on_startup=False,
            broker_connection_timeout=3,
            broker_transport_options={"max_retries": 1, "socket_connect_timeout": 3},
        )

    def send(self, task_name: str, job_id: str, *, queue: str) -> None:
        self.app.send_task(task_name, args=[job_id], queue=queue, retry=False)

    def depth(self, queue: str) -> int | None:
        try:
            with self.app.connection_for_write() as conn:
                channel = conn.default_channel
                _, count, _ = channel.queue_declare(queue=queue, passive=True)  # type: ignore[attr-defined]
                return int(count)
        except Exception:  # broker down or queue not declared yet
            log.debug("queue depth of %s unavailable", queue, exc_info=True)
            return None

    def ping(self) -> bool:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
            return True
        except Exception:
            log.debug("broker unreachable", exc_info=True)
            return False


class FakeQueue:
    """Records sends; for unit tests of the HTTP layer (integration tests use CeleryQueue)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.fail = False

    def send(self, task_name: str, job_id: str, *, queue: str) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable (FakeQueue.fail)")
        self.sent.append((task_name, job_id, queue))

    def depth(self, queue: str) -> int | None:
        return sum(1 for _, _, q in self.sent if q == queue)

    def ping(self) -> bool:
        return not self.fail
