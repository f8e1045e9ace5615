"""Request and response models of the REST API (separate from the ORM models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.db.models import JobKind, JobStatus

__all__ = [
    "ArtifactRead",
    "Comparison",
    "DatasetRead",
    "EvalSpec",
    "JobCreate",
    "JobPage",
    "JobRead",
    "LogPage",
    "MetricsSeries",
    "PredictionPage",
    "PreflightRequest",
    "TeacherRead",
]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DatasetRead(_Out):
    id: str
    name: str
    format: str
    content_hash: str
    num_images: int
    num_boxes: int
    class_names: list[str]
    size_bytes: int
    created_at: datetime


class DatasetDetail(DatasetRead):
    stats: dict[str, Any]


class TeacherRead(_Out):
    id: str
    name: str
    arch: str
    class_names: list[str]
    sha256: str
    size_bytes: int
    load_report: dict[str, Any]
    created_at: datetime


class EvalSpec(BaseModel):
    """The config of an ``eval`` job: evaluate ``source_job_id``'s model on ``dataset_id``."""

    model_config = ConfigDict(extra="forbid")

    split: str = Field(default="val", min_length=1, max_length=100)
    image_size: int | None = Field(default=None, ge=32, le=4096)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(default=4, ge=1, le=256)


class JobCreate(BaseModel):
    """Submit a job.

    ``config`` is a ``DistillConfig`` (engine) without the paths: ``data.root`` and
    ``distill.teacher`` come from ``dataset_id`` and ``teacher_id``. Example (train):
    ``{"kind": "train", "dataset_id": "...", "config": {"model": {"arch":
    "retinanet_resnet18_fpn"}, "data": {"image_size": 320}, "train": {"epochs": 6}}}``.
    For ``eval`` jobs ``config`` is an :class:`EvalSpec` and ``source_job_id`` names the job whose
    ``model.pt`` is evaluated.
    """

    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    name: str | None = Field(default=None, max_length=200)
    dataset_id: str = Field(min_length=1, max_length=64)
    teacher_id: str | None = Field(default=None, min_length=1, max_length=64)
    source_job_id: str | None = Field(default=None, min_length=1, max_length=64)
    config: dict[str, Any] = Field(default_factory=dict)


class JobRead(_Out):
    id: str
    kind: JobKind
    name: str | None
    status: JobStatus
    dataset_id: str
    teacher_id: str | None
    source_job_id: str | None
    config: dict[str, Any]
    queue: str
    progress: float
    epoch: int
    step: int
    total_steps: int | None
    eta_s: float | None
    images_per_s: float | None
    heartbeat_at: datetime | None
    attempt: int
    cancel_requested: bool
    worker: str | None
    failure_code: str | None
    failure_message: str | None
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    items: list[JobRead]
    total: int
    limit: int
    offset: int


class Series(BaseModel):
    steps: list[int]
    values: list[float]


class MetricsSeries(BaseModel):
    job_id: str
    series: dict[str, Series]
    last_id: int


class LogLine(_Out):
    id: int
    level: str
    message: str
    created_at: datetime


class LogPage(BaseModel):
    items: list[LogLine]
    last_id: int


class ArtifactRead(_Out):
    name: str
    size_bytes: int
    sha256: str
    created_at: datetime


# --- dashboard data (api/routes/viewer.py) ------------------------------------------------------

GtBox = tuple[float, float, float, float, str]  # x1, y1, x2, y2 (absolute pixels), class name
DetBox = tuple[float, float, float, float, float, str]  # x1, y1, x2, y2, score, class name


class PredictionItem(BaseModel):
    image_id: int
    file_name: str
    url: str = Field(description="the image, from GET /datasets/{id}/images/{file_path}")
    width: int
    height: int
    gt: list[GtBox]
    student: list[DetBox]
    teacher: list[DetBox] = Field(description="empty when the job has no teacher")
    misses: int = Field(
        description="ground-truth boxes a teacher box finds (score >= 0.5, IoU >= 0.5, same "
        "class) and no student box finds"
    )


class PredictionPage(BaseModel):
    total: int
    items: list[PredictionItem]


class ComparisonStudent(BaseModel):
    job_id: str
    metrics: dict[str, Any] | None
    params: int | None


class ComparisonTeacher(BaseModel):
    arch: str
    metrics: dict[str, Any] | None
    params: int | None


class ComparisonBaseline(BaseModel):
    job_id: str
    status: JobStatus
    metrics: dict[str, Any] | None
    params: int | None


class Comparison(BaseModel):
    student: ComparisonStudent
    teacher: ComparisonTeacher | None
    baseline: ComparisonBaseline | None
    ap_retained: float | None = Field(description="student AP / teacher AP (a fraction)")


class PreflightRequest(BaseModel):
    """Check a distillation set-up: the fields of ``POST /jobs`` with kind ``distill``."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    teacher_id: str = Field(min_length=1, max_length=64)
    config: dict[str, Any] = Field(default_factory=dict)
