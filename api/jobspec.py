"""Turning a ``JobCreate`` into a validated engine config (torch-free: ``bmgkd_core.config``)."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from api.db.models import Dataset, Job, JobKind, JobStatus, Teacher
from api.schemas import EvalSpec, JobCreate
from bmgkd_core.config import DistillConfig

__all__ = ["JobSpecError", "build_job_config", "device_of"]

# Placeholders for the paths the worker fills in from dataset_id / teacher_id.
DATA_ROOT = "<dataset>"
TEACHER_PATH = "<teacher>"


class JobSpecError(ValueError):
    def __init__(self, field: str, message: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(message if message.startswith(f"{field}:") else f"{field}: {message}")
        self.field = field
        self.errors = errors or []


_NAMED = re.compile(r"^([a-z_]+(?:\.[a-z_]+)+): ")


def _pydantic_errors(exc: ValidationError, prefix: str) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in (prefix, *err["loc"]))
        msg = str(err["msg"]).removeprefix("Value error, ")
        named = _NAMED.match(msg)  # the engine's validators name the field themselves
        if named:
            loc = f"{prefix}.{named.group(1)}"
            msg = msg[named.end() :]
        out.append({"field": loc, "message": f"{loc}: {msg}"})
    return out


def _family(arch: str) -> str:
    return arch.split("_", 1)[0]


def build_job_config(
    req: JobCreate, dataset: Dataset, teacher: Teacher | None, source: Job | None
) -> dict[str, Any]:
    """Validate and return the config JSON stored on the job row.

    Raises:
        JobSpecError: naming the field at fault (``config.model.arch`` etc.).
    """
    if req.kind == JobKind.eval:
        if req.teacher_id is not None:
            raise JobSpecError("teacher_id", "an eval job has no teacher")
        return _eval_config(req, dataset, source)
    if req.source_job_id is not None:
        raise JobSpecError("source_job_id", f"only eval jobs take a source job, not {req.kind}")
    if req.kind == JobKind.train and req.teacher_id is not None:
        raise JobSpecError("teacher_id", "a train job has no teacher; use kind 'distill'")
    if req.kind == JobKind.distill and teacher is None:
        raise JobSpecError("teacher_id", "required for a distill job")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in req.config.items()}
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise JobSpecError("config.data", "must be an object")
    if "root" in data:
        raise JobSpecError("config.data.root", "set by the service from dataset_id; leave it out")
    raw["data"] = {**data, "root": DATA_ROOT, "format": dataset.format}
    if teacher is not None:
        raw["distill"] = _distill_section(raw.get("distill"), teacher)
    elif raw.get("distill") is not None:
        raise JobSpecError("config.distill", "only distill jobs take a distill section")
    cfg = _validate(DistillConfig, raw)
    _check_splits(
        dataset,
        {
            "config.data.train_split": cfg.data.train_split,
            "config.data.val_split": cfg.data.val_split,
        },
    )
    if teacher is not None:
        _check_teacher(teacher, dataset, cfg.model.arch)
    return cfg.model_dump(mode="json")


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], raw: Any) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = _pydantic_errors(exc, "config")
        raise JobSpecError(errors[0]["field"], errors[0]["message"], errors) from exc


def _eval_config(req: JobCreate, dataset: Dataset, source: Job | None) -> dict[str, Any]:
    if source is None:
        raise JobSpecError("source_job_id", "required for an eval job")
    if source.status != JobStatus.succeeded:
        raise JobSpecError("source_job_id", f"job {source.id} has not succeeded")
    spec = _validate(EvalSpec, req.config)
    _check_splits(dataset, {"config.split": spec.split})
    return spec.model_dump()


def _distill_section(kd: Any, teacher: Teacher) -> dict[str, Any]:
    kd = kd or {}
    if not isinstance(kd, dict):
        raise JobSpecError("config.distill", "must be an object")
    for key in ("teacher", "teacher_arch"):
        if key in kd:
            raise JobSpecError(f"config.distill.{key}", "set by the service from teacher_id")
    return {**kd, "teacher": TEACHER_PATH, "teacher_arch": teacher.arch}


def _check_splits(dataset: Dataset, wanted: dict[str, str]) -> None:
    splits = set(dataset.stats.get("splits", {}))
    for field, split in wanted.items():
        if splits and split not in splits:
            raise JobSpecError(
                field, f"dataset {dataset.id} has no split {split!r} (it has {sorted(splits)})"
            )


def _check_teacher(teacher: Teacher, dataset: Dataset, student_arch: str) -> None:
    if _family(teacher.arch) != _family(student_arch):
        raise JobSpecError(
            "teacher_id",
            f"teacher {teacher.arch!r} and student {student_arch!r} must be the same "
            "detector family (backbones may differ)",
        )
    if list(teacher.class_names) != list(dataset.class_names):
        raise JobSpecError(
            "teacher_id",
            f"teacher classes {teacher.class_names[:10]} differ from the dataset's "
            f"{dataset.class_names[:10]}",
        )


def device_of(kind: JobKind, config: dict[str, Any]) -> str:
    if kind == JobKind.eval:
        return str(config.get("device", "auto"))
    return str(config.get("train", {}).get("device", "auto"))
