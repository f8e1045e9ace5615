"""``/api/v1/jobs``: submit (commit, then enqueue), list, read, cancel, resume, delete."""

from __future__ import annotations

import logging
import shutil
from typing import Annotated, TypeVar

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.db.models import Dataset, Job, JobStatus, Teacher, User
from api.db.repo import JobRepo
from api.deps import CurrentUser, QueueDep, SessionDep, SettingsDep, get_owned
from api.jobspec import JobSpecError, build_job_config, device_of
from api.queue import TASK_NAMES, TaskQueue, queue_for_device
from api.schemas import JobCreate, JobPage, JobRead
from api.settings import Settings

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = logging.getLogger(__name__)

T = TypeVar("T", Dataset, Teacher, Job)


def _owned_ref(session: Session, model: type[T], obj_id: str, user: User, field: str) -> T:
    """A referenced object of the user's, or 422 naming the field (others' look absent)."""
    obj = session.get(model, obj_id)
    if obj is None or obj.user_id != user.id:
        raise HTTPException(
            422, {"field": field, "message": f"{field}: no {model.__tablename__[:-1]} {obj_id!r}"}
        )
    return obj


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobRead)
def create_job(
    body: JobCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep, queue: QueueDep
) -> Job:
    """Validate the config with the engine's model, insert the job, commit, then enqueue it.

    If the broker is unreachable the job stays ``queued`` and the sweeper sends it later.
    """
    dataset = _owned_ref(session, Dataset, body.dataset_id, user, "dataset_id")
    teacher: Teacher | None = None
    if body.teacher_id is not None:
        teacher = _owned_ref(session, Teacher, body.teacher_id, user, "teacher_id")
    source: Job | None = None
    if body.source_job_id is not None:
        source = _owned_ref(session, Job, body.source_job_id, user, "source_job_id")
    return submit_job(session, settings, queue, user, body, dataset, teacher, source)


def submit_job(
    session: Session,
    settings: Settings,
    queue: TaskQueue,
    user: User,
    body: JobCreate,
    dataset: Dataset,
    teacher: Teacher | None = None,
    source: Job | None = None,
) -> Job:
    """Build the config (422 naming the field), insert, commit, then enqueue (shared by
    ``POST /jobs`` and ``POST /jobs/{id}/baseline``)."""
    try:
        config = build_job_config(body, dataset, teacher, source)
    except JobSpecError as exc:
        raise HTTPException(
            422, {"field": exc.field, "message": str(exc), "errors": exc.errors}
        ) from exc
    job = Job(
        user_id=user.id,
        kind=body.kind,
        name=body.name,
        dataset_id=dataset.id,
        teacher_id=teacher.id if teacher else None,
        source_job_id=source.id if source else None,
        config=config,
        queue=queue_for_device(settings, device_of(body.kind, config)),
    )
    session.add(job)
    session.commit()
    _enqueue(queue, job)
    return job


def _enqueue(queue: TaskQueue, job: Job) -> None:
    try:
        queue.send(TASK_NAMES[job.kind.value], job.id, queue=job.queue)
    except Exception:
        log.warning("job %s: broker unreachable; the sweeper will send it", job.id, exc_info=True)


@router.get("", response_model=JobPage)
def list_jobs(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobPage:
    """Newest first; ``status`` filters; ``limit``/``offset`` paginate (``total`` counts all)."""
    limit = min(limit, settings.page_size_max)
    where = [Job.user_id == user.id]
    if status_ is not None:
        where.append(Job.status == status_)
    total = session.execute(select(func.count()).select_from(Job).where(*where)).scalar_one()
    rows = session.execute(
        select(Job)
        .where(*where)
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
        .offset(offset)
    ).scalars()
    return JobPage(
        items=[JobRead.model_validate(j) for j in rows], total=total, limit=limit, offset=offset
    )


@router.get("/{job_id}", response_model=JobRead)
def read_job(job_id: str, user: CurrentUser, session: SessionDep) -> Job:
    return get_owned(session, Job, job_id, user)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobRead)
def cancel_job(job_id: str, user: CurrentUser, session: SessionDep) -> Job:
    """A queued job is cancelled at once; a running one stops within a step (seconds), keeping
    ``resume.pt`` so that ``resume`` continues it."""
    job = get_owned(session, Job, job_id, user)
    if JobRepo(session).request_cancel(job.id) is None:
        session.refresh(job)
        raise HTTPException(409, f"job {job_id} is already {job.status.value}")
    session.refresh(job)
    return job


@router.post("/{job_id}/resume", status_code=status.HTTP_202_ACCEPTED, response_model=JobRead)
def resume_job(job_id: str, user: CurrentUser, session: SessionDep, queue: QueueDep) -> Job:
    """Re-queue a failed or cancelled job; the worker continues from its ``resume.pt``."""
    job = get_owned(session, Job, job_id, user)
    if not JobRepo(session).requeue_for_resume(job.id):
        session.refresh(job)
        raise HTTPException(
            409, f"job {job_id} is {job.status.value}; only failed or cancelled jobs resume"
        )
    session.refresh(job)
    _enqueue(queue, job)
    return job


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(
    job_id: str, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> Response:
    """Delete a finished job, its metrics, logs and run folder (running jobs: cancel first)."""
    job = get_owned(session, Job, job_id, user)
    if not JobRepo.is_terminal(job.status):
        raise HTTPException(409, f"job {job_id} is {job.status.value}; cancel it first")
    session.delete(job)
    session.commit()
    shutil.rmtree(settings.runs_dir / job_id, ignore_errors=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
