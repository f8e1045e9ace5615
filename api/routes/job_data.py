"""Per-job data: metric series, Server-Sent Events, logs and artifacts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.db.models import TERMINAL_STATUSES, Artifact, Job, JobLog, MetricPoint
from api.deps import CurrentUser, SessionDep, SettingsDep, get_owned
from api.schemas import ArtifactRead, JobRead, LogLine, LogPage, MetricsSeries, Series

router = APIRouter(prefix="/jobs", tags=["jobs"])

MAX_ID = 2**63 - 1  # BIGINT


def _series(session: Session, job_id: str, after_id: int, names: list[str] | None) -> MetricsSeries:
    q = select(MetricPoint.id, MetricPoint.step, MetricPoint.name, MetricPoint.value).where(
        MetricPoint.job_id == job_id, MetricPoint.id > after_id
    )
    if names:
        q = q.where(MetricPoint.name.in_(names))
    series: dict[str, Series] = {}
    last = after_id
    for pid, step, name, value in session.execute(q.order_by(MetricPoint.id)):
        s = series.setdefault(name, Series(steps=[], values=[]))
        s.steps.append(step)
        s.values.append(value)
        last = max(last, pid)
    return MetricsSeries(job_id=job_id, series=series, last_id=last)


@router.get("/{job_id}/metrics", response_model=MetricsSeries)
def job_metrics(
    job_id: str,
    user: CurrentUser,
    session: SessionDep,
    name: Annotated[list[str] | None, Query(description="only these series")] = None,
    after_id: Annotated[
        int, Query(ge=0, le=MAX_ID, description="only points newer than this id")
    ] = 0,
) -> MetricsSeries:
    """Series for charts: ``{name: {steps, values}}``; poll with ``after_id=last_id``."""
    get_owned(session, Job, job_id, user)
    return _series(session, job_id, after_id, name)


@router.get("/{job_id}/logs", response_model=LogPage)
def job_logs(
    job_id: str,
    user: CurrentUser,
    session: SessionDep,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> LogPage:
    get_owned(session, Job, job_id, user)
    rows = session.execute(
        select(JobLog)
        .where(JobLog.job_id == job_id, JobLog.id > after_id)
        .order_by(JobLog.id)
        .limit(limit)
    ).scalars()
    items = [LogLine.model_validate(r) for r in rows]
    return LogPage(items=items, last_id=items[-1].id if items else after_id)


@router.get("/{job_id}/artifacts", response_model=list[ArtifactRead])
def list_artifacts(job_id: str, user: CurrentUser, session: SessionDep) -> list[Artifact]:
    get_owned(session, Job, job_id, user)
    rows = session.execute(
        select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)
    )
    return list(rows.scalars())


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_artifact(
    job_id: str, name: str, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    """Download ``model.pt`` (loads into plain torchvision), ``metrics.json``, ``config.json``..."""
    get_owned(session, Job, job_id, user)
    art = session.execute(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
    ).scalar_one_or_none()
    if art is None:
        raise HTTPException(404, f"job {job_id} has no artifact {name!r}")
    root = settings.data_dir.resolve()
    path = (root / art.path).resolve()
    if root not in path.parents or not path.is_file():
        raise HTTPException(404, f"artifact {name!r} of job {job_id} is no longer on disk")
    return FileResponse(
        path,
        filename=f"{job_id}-{name}",
        media_type="application/json" if name.endswith(".json") else "application/octet-stream",
        headers={"X-Content-SHA256": art.sha256},
    )


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _snapshot(
    factory: sessionmaker[Session], job_id: str, after_id: int
) -> tuple[dict[str, Any], MetricsSeries]:
    with factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            return {}, MetricsSeries(job_id=job_id, series={}, last_id=after_id)
        read = JobRead.model_validate(job).model_dump(mode="json")
        return read, _series(session, job_id, after_id, None)


async def _event_stream(
    factory: sessionmaker[Session],
    job_id: str,
    after_id: int,
    poll_s: float,
    is_disconnected: Callable[[], Any],
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    last_status: str | None = None
    last_step: int | None = None
    last_ping = time.monotonic()
    while True:
        job, metrics = await run_in_threadpool(_snapshot, factory, job_id, after_id)
        if not job:
            yield _sse("end", {"reason": "deleted"})
            return
        if job["status"] != last_status:
            yield _sse("status", job, metrics.last_id)
            last_status = job["status"]
        if job["step"] != last_step or metrics.series:
            keys = ("status", "progress", "epoch", "step", "total_steps", "eta_s", "images_per_s")
            yield _sse("progress", {k: job[k] for k in keys}, metrics.last_id)
            last_step = job["step"]
        if metrics.series:
            yield _sse("metrics", metrics.model_dump(), metrics.last_id)
            after_id = metrics.last_id
        if job["status"] in {s.value for s in TERMINAL_STATUSES}:
            yield _sse("end", {"status": job["status"]}, after_id)
            return
        if time.monotonic() - last_ping > 15:
            yield ": keep-alive\n\n"
            last_ping = time.monotonic()
        if await is_disconnected():
            return
        await asyncio.sleep(poll_s)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def job_events(
    job_id: str,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-Sent Events: ``status`` (the whole job, on each change), ``progress``, ``metrics``
    (new points, as in ``/metrics``) and a final ``end`` when the job is terminal. Reconnecting
    with ``Last-Event-ID`` continues after the metric points already received."""
    get_owned(session, Job, job_id, user)
    try:
        after_id = min(max(int(last_event_id or 0), 0), MAX_ID)
    except ValueError:
        after_id = 0
    stream = _event_stream(
        request.app.state.session_factory,
        job_id,
        after_id,
        settings.events_poll_s,
        request.is_disconnected,
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


__all__ = ["router"]
