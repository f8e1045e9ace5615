"""The Celery application: every Celery option is set here, in ``create_celery``, and only here.

``celery -A worker.celery_app worker -Q gpu --concurrency 1`` uses the module-level
``celery_app``, built from the ``BMGKD_*`` environment.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from api.settings import Settings, get_settings

__all__ = ["celery_app", "create_celery"]


def create_celery(settings: Settings) -> Celery:
    app = Celery("bmgkd", include=["worker.tasks"])
    transport: dict[str, object] = {}
    if settings.broker_url.startswith(("redis", "rediss")):
        # A message not acked within this window is re-delivered: longer than any job.
        transport["visibility_timeout"] = settings.job_max_seconds + 3600
    app.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_default_queue=settings.cpu_queue,
        task_queues=[Queue(settings.gpu_queue), Queue(settings.cpu_queue)],
        worker_hijack_root_logger=False,
        worker_max_tasks_per_child=1,  # a fresh process per job: GPU memory and leaks go away
        timezone="UTC",
    )
    return app


celery_app = create_celery(get_settings())
