"""Job state transitions as single conditional UPDATEs, shared by the API, worker and sweeper.

Every transition names the state it starts from in its WHERE clause, so two workers (or a worker
and the sweeper) racing on one job cannot both win: the loser's UPDATE matches no row.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from api.db.base import utcnow
from api.db.models import (
    TERMINAL_STATUSES,
    ApiKey,
    Job,
    JobLog,
    JobStatus,
    MetricPoint,
    User,
)

__all__ = ["JobRepo", "UserRepo", "hash_key"]

KEY_PREFIX = "bmgkd_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class UserRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create_user(self, name: str) -> tuple[User, str]:
        """Create a user and a first key; the key is returned once and only its hash is stored."""
        user = User(name=name)
        self.session.add(user)
        self.session.flush()
        return user, self.create_key(user)

    def create_key(self, user: User) -> str:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        self.session.add(ApiKey(user_id=user.id, key_hash=hash_key(key), prefix=key[:12]))
        self.session.flush()
        return key

    def user_for_key(self, key: str) -> User | None:
        row = self.session.execute(
            select(User)
            .join(ApiKey, ApiKey.user_id == User.id)
            .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        ).scalar_one_or_none()
        return row

    def by_name(self, name: str) -> User | None:
        return self.session.execute(select(User).where(User.name == name)).scalar_one_or_none()


@dataclass(frozen=True)
class Progress:
    epoch: int
    step: int
    total_steps: int
    eta_s: float | None
    images_per_s: float | None


class JobRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, job_id: str) -> Job | None:
        return self.session.get(Job, job_id)

    def claim(self, job_id: str, *, worker: str, stale_after_s: float) -> Job | None:
        """Take the job for this worker: ``queued -> running`` (attempt + 1), or take over a
        ``running`` job whose heartbeat is older than ``stale_after_s`` (attempt + 1).

        Returns the claimed job, or ``None`` when someone else holds it or it is finished or a
        cancel was requested (the caller then does nothing: a re-delivered task is a no-op).
        """
        now = utcnow()
        stale = now - timedelta(seconds=stale_after_s)
        res = self.session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.cancel_requested.is_(False),
                or_(
                    Job.status == JobStatus.queued,
                    and_(
                        Job.status == JobStatus.running,
                        or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
                    ),
                ),
            )
            .values(
                status=JobStatus.running,
                attempt=Job.attempt + 1,
                heartbeat_at=now,
                worker=worker,
                started_at=func.coalesce(Job.started_at, now),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return None
        job = self.session.get(Job, job_id, populate_existing=True)
        return job

    def heartbeat(self, job_id: str, *, worker: str) -> tuple[bool, bool]:
        """Refresh the heartbeat of a job this worker holds.

        Returns ``(still_ours, cancel_requested)``; ``still_ours`` is False when the job was
        taken over (its heartbeat went stale) or finished elsewhere.
        """
        now = utcnow()
        res = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running, Job.worker == worker)
            .values(heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        cancel = self.session.execute(
            select(Job.cancel_requested).where(Job.id == job_id)
        ).scalar_one_or_none()
        return res.rowcount == 1, bool(cancel)  # type: ignore[attr-defined]

    def update_progress(
        self,
        job_id: str,
        *,
        worker: str,
        progress: Progress,
        points: Sequence[tuple[int, str, float]] = (),
    ) -> None:
        now = utcnow()
        total = max(progress.total_steps, 1)
        self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running, Job.worker == worker)
            .values(
                epoch=progress.epoch,
                step=progress.step,
                total_steps=progress.total_steps,
                progress=min(progress.step / total, 1.0),
                eta_s=progress.eta_s,
                images_per_s=progress.images_per_s,
                heartbeat_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        self.add_points(job_id, points)
        self.session.commit()

    def add_points(self, job_id: str, points: Sequence[tuple[int, str, float]]) -> None:
        if points:
            self.session.add_all(
                MetricPoint(job_id=job_id, step=s, name=n, value=v) for s, n, v in points
            )

    def log(self, job_id: str, level: str, message: str) -> None:
        self.session.add(JobLog(job_id=job_id, level=level, message=message[:10_000]))
        self.session.commit()

    def finish(
        self,
        job_id: str,
        *,
        worker: str,
        status: JobStatus,
        result: Mapping[str, Any] | None = None,
        failure_code: str | None = None,
        failure_message: str | None = None,
    ) -> bool:
        """Move a running job this worker holds to a terminal status; False if not ours."""
        now = utcnow()
        values: dict[str, Any] = {
            "status": status,
            "finished_at": now,
            "updated_at": now,
            "failure_code": failure_code,
            "failure_message": failure_message,
            "eta_s": None,
        }
        if result is not None:
            values["result"] = dict(result)
        if status == JobStatus.succeeded:
            values["progress"] = 1.0
        res = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running, Job.worker == worker)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return res.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    def request_cancel(self, job_id: str) -> JobStatus | None:
        """Cancel: a queued job becomes ``cancelled`` at once; a running one gets the flag and
        its worker stops within a step (it writes ``resume.pt`` and marks it ``cancelled``).
        Returns the new status, or ``None`` when the job was already finished."""
        now = utcnow()
        res = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(
                status=JobStatus.cancelled,
                cancel_requested=True,
                finished_at=now,
                updated_at=now,
                failure_code="CANCELLED",
                failure_message="cancelled before it started",
            )
            .execution_options(synchronize_session=False)
        )
        if res.rowcount == 1:  # type: ignore[attr-defined]
            self.session.commit()
            return JobStatus.cancelled
        res = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running)
            .values(cancel_requested=True, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return JobStatus.running if res.rowcount == 1 else None  # type: ignore[attr-defined]

    def requeue_for_resume(self, job_id: str) -> bool:
        """``failed|cancelled -> queued`` keeping the run folder, so the worker resumes from
        ``resume.pt``. Returns False when the job is not in a resumable state."""
        now = utcnow()
        res = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_([JobStatus.failed, JobStatus.cancelled]))
            .values(
                status=JobStatus.queued,
                cancel_requested=False,
                failure_code=None,
                failure_message=None,
                finished_at=None,
                heartbeat_at=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return res.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    def stale_running(self, *, stale_after_s: float, limit: int = 100) -> list[Job]:
        stale = utcnow() - timedelta(seconds=stale_after_s)
        return list(
            self.session.execute(
                select(Job)
                .where(
                    Job.status == JobStatus.running,
                    or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
                )
                .limit(limit)
            ).scalars()
        )

    def queued_older_than(self, *, seconds: float, limit: int = 100) -> list[Job]:
        """Queued jobs that no worker has taken for ``seconds`` (lost or never-sent messages)."""
        cutoff = utcnow() - timedelta(seconds=seconds)
        return list(
            self.session.execute(
                select(Job)
                .where(Job.status == JobStatus.queued, Job.updated_at < cutoff)
                .limit(limit)
            ).scalars()
        )

    def touch(self, job_id: str) -> None:
        self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        self.session.commit()

    def fail_lost(self, job_id: str, *, message: str, at: datetime | None = None) -> bool:
        """Mark a stale running job ``failed`` with ``WORKER_LOST`` (out of attempts)."""
        now = at or utcnow()
        res = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running)
            .values(
                status=JobStatus.failed,
                failure_code="WORKER_LOST",
                failure_message=message,
                finished_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return res.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    def requeue_stale(self, job_id: str, *, stale_after_s: float) -> bool:
        """``running`` with a stale heartbeat -> ``queued`` (its worker is gone); the next claim
        counts the attempt. Queued, it is not re-sent again on every sweep."""
        now = utcnow()
        stale = now - timedelta(seconds=stale_after_s)
        res = self.session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status == JobStatus.running,
                or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
            )
            .values(status=JobStatus.queued, worker=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return res.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    def cancel_lost(self, job_id: str) -> bool:
        """A stale running job whose cancel was requested: ``cancelled`` (its worker is gone, so
        nobody else would ever finish it; ``resume.pt`` stays for a resume)."""
        now = utcnow()
        res = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running, Job.cancel_requested)
            .values(
                status=JobStatus.cancelled,
                failure_code="CANCELLED",
                failure_message="cancelled (its worker stopped before it could acknowledge)",
                finished_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return res.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    @staticmethod
    def is_terminal(status: JobStatus) -> bool:
        return status in TERMINAL_STATUSES
