"""Dashboard data endpoints: predictions viewer, comparison table, preflight, dataset images."""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import subprocess
import sys
import threading
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import Artifact, Dataset, Job, JobKind, JobStatus, Teacher
from api.deps import CurrentUser, QueueDep, SessionDep, SettingsDep, get_owned, unprocessable
from api.jobspec import JobSpecError, build_job_config
from api.predictions import (
    IMAGE_DIRS,
    LruCache,
    PredictionSet,
    build_prediction_set,
    load_split,
    read_results,
)
from api.routes.jobs import _owned_ref, submit_job
from api.schemas import Comparison, JobCreate, JobRead, PredictionPage, PreflightRequest
from api.settings import Settings
from api.uploads import scrub_paths
from bmgkd_core.data.validate import ParsedSplit

router = APIRouter(tags=["viewer"])
log = logging.getLogger(__name__)

STUDENT_PREDICTIONS = "predictions_val.json"
TEACHER_PREDICTIONS = "teacher_predictions_val.json"
_SPLITS: LruCache[tuple[str, str], ParsedSplit] = LruCache(maxsize=8)
_PREDICTION_SETS: LruCache[tuple[str, ...], PredictionSet] = LruCache(maxsize=4)
# Preflight runs a training step and a teacher evaluation on the API host's CPU: at most two.
_PREFLIGHT_SLOTS = threading.BoundedSemaphore(2)
_PREFLIGHT_ERROR = "bmgkd preflight: "


# --- dataset images ----------------------------------------------------------------------------


def _confined_image(root: Path, file_path: str) -> Path | None:
    """``root/file_path`` if it is a file inside ``images/`` or ``JPEGImages/`` of ``root``."""
    parts = PurePosixPath(file_path).parts
    if len(parts) < 2 or parts[0] not in IMAGE_DIRS:
        return None
    try:
        base = (root / parts[0]).resolve()
        path = (root / file_path).resolve()
    except (OSError, ValueError):  # NUL bytes, loops, names too long
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


@router.get(
    "/datasets/{dataset_id}/images/{file_path:path}",
    name="dataset_image",
    response_class=FileResponse,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
)
def dataset_image(
    dataset_id: str, file_path: str, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    """An image of the dataset: ``file_path`` is relative to its root (``images/...`` for COCO,
    ``JPEGImages/...`` for VOC); anything else is 404."""
    dataset = get_owned(session, Dataset, dataset_id, user)
    path = _confined_image((settings.data_dir / dataset.storage_path).resolve(), file_path)
    if path is None:
        raise HTTPException(404, f"dataset {dataset_id} has no image {file_path!r}")
    return FileResponse(
        path,
        media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


# --- predictions viewer ------------------------------------------------------------------------


def _split_of(job: Job) -> str:
    if job.kind == JobKind.eval:
        return str(job.config.get("split", "val"))
    return str(job.config.get("data", {}).get("val_split", "val"))


def _artifacts(session: Session, job_id: str, names: tuple[str, ...]) -> dict[str, Artifact]:
    rows = session.execute(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.name.in_(names))
    ).scalars()
    return {a.name: a for a in rows}


def _artifact_path(settings: Settings, art: Artifact | None) -> Path | None:
    if art is None:
        return None
    root = settings.data_dir.resolve()
    path = (root / art.path).resolve()
    return path if root in path.parents and path.is_file() else None


def _prediction_set(session: Session, job: Job, settings: Settings) -> PredictionSet:
    dataset = session.get(Dataset, job.dataset_id)
    if dataset is None:  # the foreign key forbids it; be safe anyway
        raise HTTPException(404, f"dataset {job.dataset_id} of job {job.id} no longer exists")
    root = settings.data_dir / dataset.storage_path
    split = _split_of(job)
    arts = _artifacts(session, job.id, (STUDENT_PREDICTIONS, TEACHER_PREDICTIONS))
    student, teacher = arts.get(STUDENT_PREDICTIONS), arts.get(TEACHER_PREDICTIONS)
    key = (job.id, dataset.id, split, *(a.sha256 if a else "" for a in (student, teacher)))

    def build() -> PredictionSet:
        try:
            parsed = _SPLITS.get_or_build(
                (dataset.id, split), lambda: load_split(root, dataset.format, split)
            )
        except Exception as exc:  # the dataset was validated at upload; the disk may have changed
            log.warning("dataset %s split %s unreadable: %s", dataset.id, split, exc)
            raise HTTPException(
                409, f"split {split!r} of dataset {dataset.id} cannot be read"
            ) from exc
        return build_prediction_set(
            parsed,
            root,
            dataset.format,
            read_results(_artifact_path(settings, student), parsed.label_map),
            read_results(_artifact_path(settings, teacher), parsed.label_map),
        )

    return _PREDICTION_SETS.get_or_build(key, build)


@router.get("/jobs/{job_id}/predictions", response_model=PredictionPage)
def job_predictions(
    job_id: str,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 24,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    sort: Annotated[Literal["misses", "name"], Query()] = "misses",
    min_score: Annotated[float, Query(ge=0.0, le=1.0)] = 0.05,
) -> dict[str, Any]:
    """Ground truth, student and teacher boxes per val image (from the job's predictions
    artifacts; lists are empty until the job has written them). ``sort=misses`` puts first the
    images with the most ground-truth boxes the teacher finds and the student misses."""
    job = get_owned(session, Job, job_id, user)
    pset = _prediction_set(session, job, settings)
    base = str(request.app.url_path_for("dataset_image", dataset_id=job.dataset_id, file_path="x"))
    items = pset.page(sort, offset, limit, min_score)
    for item in items:
        item["url"] = base[:-1] + quote(item.pop("rel_path"), safe="/")
    return {"total": len(pset.images), "items": items}


# --- comparison and baseline -------------------------------------------------------------------


def _bbox(doc: Any) -> dict[str, Any] | None:
    bbox = doc.get("bbox") if isinstance(doc, dict) else None
    return bbox if isinstance(bbox, dict) else None


def _params(job: Job, who: str) -> int | None:
    value = ((job.result or {}).get("params") or {}).get(who)
    return value if isinstance(value, int) else None


def _teacher_metrics(job: Job, settings: Settings) -> dict[str, Any] | None:
    """From the result; while the job runs, from the run folder's cached teacher evaluation."""
    metrics = _bbox(((job.result or {}).get("metrics") or {}).get("teacher"))
    if metrics is not None:
        return metrics
    try:
        doc = json.loads((settings.runs_dir / job.id / "teacher_metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return _bbox(doc)


def _plain_training(job: Job) -> bool:
    """Trains without distillation: kind ``train``, or ``distill`` with no enabled term."""
    if job.kind == JobKind.train:
        return True
    kd = job.config.get("distill") or {}
    terms = kd.get("terms")
    return job.kind == JobKind.distill and (
        not terms if terms is not None else kd.get("preset") == "none"
    )


def _baseline_key(config: dict[str, Any]) -> tuple[Any, ...]:
    model, data, train = (config.get(k) or {} for k in ("model", "data", "train"))
    return (model.get("arch"), data.get("image_size"), train.get("epochs"), train.get("max_steps"))


def find_baseline(session: Session, job: Job) -> Job | None:
    """The newest queued, running or succeeded job without distillation on the same dataset with
    the same student arch, image size, epochs and max steps (not ``job`` itself)."""
    if job.kind == JobKind.eval:
        return None
    key = _baseline_key(job.config)
    candidates = session.execute(
        select(Job)
        .where(
            Job.user_id == job.user_id,
            Job.dataset_id == job.dataset_id,
            Job.id != job.id,
            Job.kind.in_([JobKind.train, JobKind.distill]),
            Job.status.in_([JobStatus.queued, JobStatus.running, JobStatus.succeeded]),
        )
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(1000)
    ).scalars()
    return next(
        (c for c in candidates if _plain_training(c) and _baseline_key(c.config) == key), None
    )


@router.get("/jobs/{job_id}/comparison", response_model=Comparison)
def job_comparison(
    job_id: str, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """The student's, the teacher's and the newest matching baseline's COCO metrics and
    parameter counts; ``ap_retained`` is student AP / teacher AP."""
    job = get_owned(session, Job, job_id, user)
    student = _bbox((job.result or {}).get("metrics"))
    out: dict[str, Any] = {
        "student": {"job_id": job.id, "metrics": student, "params": _params(job, "student")},
        "teacher": None,
        "baseline": None,
        "ap_retained": None,
    }
    if job.teacher_id is not None:
        teacher_row = session.get(Teacher, job.teacher_id)
        arch = (
            teacher_row.arch
            if teacher_row
            else (job.config.get("distill") or {}).get("teacher_arch")
        )
        teacher = _teacher_metrics(job, settings)
        out["teacher"] = {"arch": str(arch), "metrics": teacher, "params": _params(job, "teacher")}
        s_ap, t_ap = (student or {}).get("AP"), (teacher or {}).get("AP")
        if isinstance(s_ap, int | float) and isinstance(t_ap, int | float) and t_ap > 0:
            out["ap_retained"] = s_ap / t_ap
    baseline = find_baseline(session, job)
    if baseline is not None:
        out["baseline"] = {
            "job_id": baseline.id,
            "status": baseline.status,
            "metrics": _bbox((baseline.result or {}).get("metrics")),
            "params": _params(baseline, "student"),
        }
    return out


@router.post("/jobs/{job_id}/baseline", status_code=status.HTTP_201_CREATED, response_model=JobRead)
def start_baseline(
    job_id: str, user: CurrentUser, session: SessionDep, settings: SettingsDep, queue: QueueDep
) -> Job:
    """Submit a ``train`` job with the same config minus the ``distill`` section (commit, then
    enqueue, as ``POST /jobs``). 409 when the job has no teacher."""
    job = get_owned(session, Job, job_id, user)
    if job.teacher_id is None or job.kind != JobKind.distill:
        raise HTTPException(409, f"job {job_id} has no teacher: it is its own baseline")
    dataset = get_owned(session, Dataset, job.dataset_id, user)
    config = {k: v for k, v in job.config.items() if k != "distill"}
    config["data"] = {k: v for k, v in (config.get("data") or {}).items() if k != "root"}
    name = f"baseline of {job.name or job.id}"[:200]
    body = JobCreate(kind=JobKind.train, name=name, dataset_id=dataset.id, config=config)
    return submit_job(session, settings, queue, user, body, dataset)


# --- preflight ---------------------------------------------------------------------------------


def _preflight_command(
    config: dict[str, Any], root: Path, fmt: str, teacher_path: Path, teacher_arch: str
) -> list[str]:
    data, train, kd = config["data"], config["train"], config["distill"]
    for field, default in (("train_split", "train"), ("val_split", "val")):
        if data[field] != default:
            raise unprocessable(
                f"config.data.{field}", "preflight runs on the 'train' and 'val' splits only"
            )
    cmd = [sys.executable, "-m", "bmgkd_core.cli", "preflight", "--data", str(root)]
    cmd += ["--format", fmt, "--student", str(config["model"]["arch"])]
    cmd += ["--teacher", str(teacher_path), "--teacher-arch", teacher_arch]
    cmd += ["--preset", str(kd["preset"]), "--image-size", str(data["image_size"])]
    cmd += ["--batch-size", str(train["batch_size"]), "--epochs", str(train["epochs"])]
    if train.get("max_steps") is not None:
        cmd += ["--max-steps", str(train["max_steps"])]
    return [*cmd, "--workers", "0", "--device", "cpu", "--json"]


def _run_preflight(cmd: list[str], timeout_s: float, scrub: list[Path]) -> dict[str, Any]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise unprocessable(
            "preflight",
            f"took longer than {timeout_s:g} s on the server's CPU; try a smaller "
            "config.data.image_size or config.train.batch_size",
        ) from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(_PREFLIGHT_ERROR)]
        if lines:
            message = lines[-1][len(_PREFLIGHT_ERROR) :].removeprefix("error: ")
            raise unprocessable("preflight", str(scrub_paths(message, scrub)))
        log.error("preflight crashed (exit %d): %s", proc.returncode, proc.stderr[-4000:])
        raise HTTPException(502, f"preflight crashed (exit {proc.returncode}); see the server log")
    try:
        report = json.loads(proc.stdout)
    except ValueError as exc:
        log.error("preflight printed no JSON report: %s", proc.stdout[-2000:])
        raise HTTPException(502, "preflight printed no report; see the server log") from exc
    scrubbed = scrub_paths(report, scrub)
    if not isinstance(scrubbed, dict):
        raise HTTPException(502, "preflight printed no report object; see the server log")
    return scrubbed


@router.post("/preflight")
def preflight(
    body: PreflightRequest, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Check a distillation set-up before submitting it (``bmgkd preflight --json`` in a child
    process, on the CPU): the strict teacher load, the class check, the teacher's AP on val, the
    distilled levels and adapters, the first step's losses, step time, memory and ETA."""
    dataset = _owned_ref(session, Dataset, body.dataset_id, user, "dataset_id")
    teacher = _owned_ref(session, Teacher, body.teacher_id, user, "teacher_id")
    request = JobCreate(
        kind=JobKind.distill, dataset_id=dataset.id, teacher_id=teacher.id, config=body.config
    )
    try:
        config = build_job_config(request, dataset, teacher, None)
    except JobSpecError as exc:
        raise HTTPException(
            422, {"field": exc.field, "message": str(exc), "errors": exc.errors}
        ) from exc
    root = (settings.data_dir / dataset.storage_path).resolve()
    teacher_path = (settings.data_dir / teacher.storage_path).resolve()
    cmd = _preflight_command(config, root, dataset.format, teacher_path, teacher.arch)
    if not _PREFLIGHT_SLOTS.acquire(blocking=False):
        raise HTTPException(
            429, "two preflights are running already; try again shortly", {"Retry-After": "30"}
        )
    try:
        scrub = [root, settings.data_dir.resolve(), settings.data_dir]
        return _run_preflight(cmd, settings.teacher_check_timeout_s, scrub)
    finally:
        _PREFLIGHT_SLOTS.release()
