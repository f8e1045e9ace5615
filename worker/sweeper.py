"""The sweeper: re-queues jobs whose worker died and re-sends jobs whose message was lost.

Runs as its own small process (``python -m worker.sweeper``), so it keeps working while every
worker is busy with a long job. Each pass:

- a ``running`` job whose heartbeat is older than ``heartbeat_stale_s``: back to ``queued`` and
  re-sent (the next worker claims it with ``attempt + 1`` and resumes from ``resume.pt``); or
  ``failed`` with ``WORKER_LOST`` once ``max_attempts`` attempts were used; or ``cancelled`` when
  a cancel was requested (a claim never takes a job with a pending cancel);
- a ``queued`` job no worker took for ``queued_resend_s``: re-sent (a duplicate message is a
  no-op, the claim is conditional).
"""

from __future__ import annotations

import argparse
import logging
import time

from sqlalchemy.orm import Session, sessionmaker

from api.db.models import Job
from api.db.repo import JobRepo
from api.queue import TASK_NAMES, TaskQueue
from api.settings import Settings, get_settings

__all__ = ["main", "sweep_once"]

log = logging.getLogger(__name__)


def _send(queue: TaskQueue, job: Job) -> bool:
    try:
        queue.send(TASK_NAMES[job.kind.value], job.id, queue=job.queue)
        return True
    except Exception:
        log.warning("sweeper: could not send job %s (broker down?)", job.id, exc_info=True)
        return False


def sweep_once(
    *, settings: Settings, session_factory: sessionmaker[Session], queue: TaskQueue
) -> dict[str, int]:
    counts = {"requeued": 0, "lost": 0, "resent": 0, "cancelled": 0}
    with session_factory() as session:
        repo = JobRepo(session)
        for job in repo.stale_running(stale_after_s=settings.heartbeat_stale_s):
            if job.cancel_requested:  # no worker will claim it again: finish the cancel here
                counts["cancelled"] += int(repo.cancel_lost(job.id))
            elif job.attempt >= settings.max_attempts:
                msg = (
                    f"the worker stopped sending heartbeats (attempt {job.attempt} of "
                    f"{settings.max_attempts}, last on {job.worker}); not retried again"
                )
                if repo.fail_lost(job.id, message=msg):
                    counts["lost"] += 1
                    log.warning("sweeper: job %s failed: %s", job.id, msg)
            elif repo.requeue_stale(job.id, stale_after_s=settings.heartbeat_stale_s):
                counts["requeued"] += 1
                log.info("sweeper: job %s had a stale heartbeat; re-queued", job.id)
                _send(queue, job)  # if the broker is down, the queued re-send below retries
        for job in repo.queued_older_than(seconds=settings.queued_resend_s):
            if _send(queue, job):
                repo.touch(job.id)
                counts["resent"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.sweeper", description=__doc__)
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from worker.runtime import get_runtime

    settings = get_settings()
    rt = get_runtime(settings)
    while True:
        try:
            counts = sweep_once(
                settings=settings, session_factory=rt.session_factory, queue=rt.queue
            )
            if any(counts.values()):
                log.info("sweeper: %s", counts)
        except Exception:
            log.exception("sweeper pass failed; retrying")
        if args.once:
            return 0
        time.sleep(settings.sweep_interval_s)


if __name__ == "__main__":
    raise SystemExit(main())
