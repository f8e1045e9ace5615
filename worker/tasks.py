"""Celery tasks: thin adapters that pass a job id to :mod:`worker.jobs`.

Task names are explicit and stable (``train.run``, ``distill.run``, ``eval.run``);
the API sends them by name and never imports this module.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from celery import shared_task
from sqlalchemy.exc import OperationalError

from api.settings import get_settings
from worker import jobs
from worker.runtime import get_runtime

log = logging.getLogger(__name__)

_RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "retry_backoff_max": 120,
    "max_retries": 5,
}


def _worker_name(task: Any) -> str:
    hostname = getattr(task.request, "hostname", None) or socket.gethostname()
    return f"{hostname}:{task.request.id}"


def _allow_child_processes() -> None:
    """Let the job start DataLoader worker processes.

    Celery's prefork pool runs tasks in daemonic children, and multiprocessing refuses to start
    children from a daemonic process ("daemonic processes are not allowed to have children").
    A job must be able to use ``data.num_workers``; the loader workers watch their parent and exit
    when it dies, so clearing the flag leaves no orphans.
    """
    import multiprocessing

    import billiard.process

    for proc in (multiprocessing.current_process(), billiard.process.current_process()):
        config = getattr(proc, "_config", None)
        if isinstance(config, dict):
            config["daemon"] = False


def _run(task: Any, job_id: str) -> str:
    _allow_child_processes()
    settings = get_settings()
    rt = get_runtime(settings)
    return jobs.run(
        job_id, settings=settings, session_factory=rt.session_factory, worker=_worker_name(task)
    )


@shared_task(name="train.run", bind=True, **_RETRY)
def run_train(self: Any, job_id: str) -> str:
    return _run(self, job_id)


@shared_task(name="distill.run", bind=True, **_RETRY)
def run_distill(self: Any, job_id: str) -> str:
    return _run(self, job_id)


@shared_task(name="eval.run", bind=True, **_RETRY)
def run_eval(self: Any, job_id: str) -> str:
    return _run(self, job_id)
