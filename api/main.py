"""``create_app(settings)``: the FastAPI application (``uvicorn --factory api.main:create_app``).

Importing this module builds nothing and never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from api.db.base import make_engine, make_session_factory
from api.db.migrate import upgrade
from api.limits import ConcurrencyLimitMiddleware
from api.queue import CeleryQueue, TaskQueue
from api.routes import datasets, health, job_data, jobs, pages, teachers, viewer
from api.settings import Settings, get_settings

__all__ = ["API_PREFIX", "create_app"]

API_PREFIX = "/api/v1"
log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, *, queue: TaskQueue | None = None, migrate: bool = True
) -> FastAPI:
    """Build the app. ``migrate`` applies Alembic migrations at start-up (idempotent)."""
    settings = settings or get_settings()
    settings.ensure_dirs()
    engine = make_engine(settings.database_url)
    if migrate:
        upgrade(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="bmgkd",
        version="0.1.0",
        description="Distillation as a service for object detectors (BMGKD). Every `/api/v1` "
        "route needs `Authorization: Bearer <key>`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.session_factory = make_session_factory(engine)
    app.state.queue = queue if queue is not None else CeleryQueue(settings)
    registry = CollectorRegistry()
    registry.register(health.JobCollector(app.state.session_factory, app.state.queue, settings))
    app.state.metrics_registry = registry
    # Requests that use the DB wait here (async, holding no thread and no connection) when
    # too many are in flight: a request holds its connection across thread-pool hand-offs, so
    # unbounded concurrency could leave every thread waiting for a connection that a request
    # waiting for a thread holds (a 30 s stall, then pool-timeout 500s).
    app.add_middleware(ConcurrencyLimitMiddleware, limit=settings.max_concurrent_requests)
    api = APIRouter(prefix=API_PREFIX)
    for module in (datasets, teachers, jobs, job_data, viewer):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(health.router)
    app.include_router(pages.router)
    static = settings.web_dir / "static"
    if static.is_dir():
        app.mount("/static", StaticFiles(directory=static), name="static")

    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            errors.append({"field": loc, "message": f"{loc}: {err.get('msg')}"})
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        return JSONResponse(
            status_code=422,
            content={"detail": {**first, "errors": errors}},
        )

    @app.exception_handler(ValidationError)
    async def _engine_invalid(request: Request, exc: ValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(map(str, e["loc"])), "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        return JSONResponse(status_code=422, content={"detail": {**errors[0], "errors": errors}})
