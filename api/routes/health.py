"""``/healthz`` (liveness), ``/readyz`` (DB and broker reachable) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from api.db.base import utcnow
from api.db.models import Job, JobStatus
from api.queue import TaskQueue
from api.settings import Settings

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)

DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers. No authentication."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "the DB or the broker is unreachable"}})
def readyz(request: Request) -> JSONResponse:
    """Readiness: a DB round trip and a broker connection. No authentication."""
    checks: dict[str, str] = {}
    try:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    queue: TaskQueue = request.app.state.queue
    checks["broker"] = "ok" if queue.ping() else "error: unreachable"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", **checks}, 200 if ok else 503)


class JobCollector(Collector):
    """Computed at scrape time from the DB (the source of truth) and the broker."""

    def __init__(
        self, factory: sessionmaker[Session], queue: TaskQueue, settings: Settings
    ) -> None:
        self.factory = factory
        self.queue = queue
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("bmgkd_jobs", "Jobs by status", labels=["status"])
        durations: list[float] = []
        with self.factory() as session:
            counts = dict(
                session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            )
            since = utcnow() - timedelta(days=7)
            rows = session.execute(
                select(Job.started_at, Job.finished_at).where(
                    Job.status == JobStatus.succeeded, Job.finished_at >= since
                )
            ).all()
        for status in JobStatus:
            jobs.add_metric([status.value], float(counts.get(status, 0)))
        yield jobs
        depth = GaugeMetricFamily(
            "bmgkd_queue_depth", "Messages waiting in the broker queue", labels=["queue"]
        )
        for q in sorted({self.settings.gpu_queue, self.settings.cpu_queue}):
            n = self.queue.depth(q)
            if n is not None:
                depth.add_metric([q], float(n))
        yield depth
        durations = [(f - s).total_seconds() for s, f in rows if s is not None and f is not None]
        buckets = [(str(b), float(sum(d <= b for d in durations))) for b in DURATION_BUCKETS]
        buckets.append(("+Inf", float(len(durations))))
        yield HistogramMetricFamily(
            "bmgkd_job_duration_seconds",
            "Run time of jobs that succeeded in the last 7 days",
            buckets=buckets,
            sum_value=sum(durations),
        )


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def prometheus_metrics(request: Request) -> Response:
    """Prometheus exposition. Open unless ``BMGKD_METRICS_TOKEN`` is set (then Bearer token)."""
    settings: Settings = request.app.state.settings
    if settings.metrics_token:
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {settings.metrics_token}":
            raise HTTPException(
                401, "metrics need the metrics token", {"WWW-Authenticate": "Bearer"}
            )
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
