"""HTML pages of the dashboard: Jinja2 shells under ``Settings.web_dir / "templates"``.

The shells carry no user data and need no key: each page's script (``web/static/js``) reads the
API key from ``sessionStorage`` and loads everything from ``/api/v1`` (see ``docs/dashboard.md``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from bmgkd_core.config import ARCHITECTURES, PRESETS, DataConfig, OptimConfig, TrainConfig

router = APIRouter(include_in_schema=False)

DEFAULT_STUDENT = "retinanet_resnet18_fpn"


def _templates(request: Request) -> Jinja2Templates:
    """The app's template loader, built on first use from its settings (never at import)."""
    state = request.app.state
    templates: Jinja2Templates | None = getattr(state, "templates", None)
    if templates is None:
        templates = Jinja2Templates(directory=state.settings.web_dir / "templates")
        state.templates = templates
    return templates


def _page(request: Request, name: str, **context: Any) -> Response:
    response = _templates(request).TemplateResponse(request, f"pages/{name}.html", context)
    response.headers["Cache-Control"] = "no-cache"
    return response


def _defaults() -> dict[str, Any]:
    """The engine's defaults, shown on the new-job form."""

    def default(model: type[Any], field: str) -> Any:
        return model.model_fields[field].default

    return {
        "image_size": default(DataConfig, "image_size"),
        "epochs": default(TrainConfig, "epochs"),
        "batch_size": default(TrainConfig, "batch_size"),
        "device": default(TrainConfig, "device"),
        "lr": default(OptimConfig, "lr"),
        "optimizer": default(OptimConfig, "optimizer"),
    }


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    return _page(request, "login", page="login", title="Sign in")


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request) -> Response:
    return _page(request, "jobs", page="jobs", title="Jobs")


@router.get("/jobs/new", response_class=HTMLResponse)
def job_new_page(request: Request) -> Response:
    return _page(
        request,
        "job_new",
        page="job_new",
        title="New job",
        architectures=ARCHITECTURES,
        default_student=DEFAULT_STUDENT if DEFAULT_STUDENT in ARCHITECTURES else ARCHITECTURES[0],
        presets=PRESETS,
        defaults=_defaults(),
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_detail_page(request: Request, job_id: str) -> Response:
    return _page(request, "job_detail", page="job_detail", title="Job", job_id=job_id)


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(request: Request, dataset_id: str) -> Response:
    return _page(request, "dataset", page="dataset", title="Dataset", dataset_id=dataset_id)
