"""``run(job_id)``: claim a job, build its engine config, run ``fit``, record the outcome.

Safe to run twice for the same id (``acks_late`` re-delivers): the claim is a conditional UPDATE,
a finished job is left alone, and a re-run resumes from ``runs/<job_id>/resume.pt``. Errors become
typed failure codes at this boundary; deterministic ones are not retried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.db.models import Artifact, Dataset, FailureCode, Job, JobKind, JobStatus, Teacher
from api.db.repo import JobRepo
from api.settings import Settings
from bmgkd_core.config import DistillConfig
from bmgkd_core.errors import Cancelled, CheckpointError, ConfigError, DataError, DivergenceError
from bmgkd_core.train.callbacks import Callback
from worker.progress import DbProgressCallback, Heartbeat, flatten_metrics

__all__ = ["ARTIFACT_FILES", "build_config", "classify_error", "count_parameters", "run"]

log = logging.getLogger(__name__)

# Files of the run folder exposed as artifacts (name -> file).
ARTIFACT_FILES = {
    "model.pt": "model.pt",
    "metrics.json": "metrics.json",
    "config.json": "config.json",
    "log.jsonl": "log.jsonl",
    "predictions_val.json": "predictions_val.json",
    "teacher_predictions_val.json": "teacher_predictions_val.json",
}
# State-dict entries that are buffers, not parameters (BatchNorm running statistics).
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

FitFn = Callable[..., Any]


def build_config(session: Session, job: Job, settings: Settings) -> DistillConfig:
    """The job's stored config with the dataset/teacher paths of this machine filled in."""
    raw = dict(job.config)
    dataset = session.get(Dataset, job.dataset_id)
    if dataset is None:
        raise DataError(f"dataset {job.dataset_id} no longer exists")
    raw["data"] = {**raw["data"], "root": str(settings.data_dir / dataset.storage_path)}
    if job.teacher_id is not None:
        teacher = session.get(Teacher, job.teacher_id)
        if teacher is None:
            raise CheckpointError(f"teacher {job.teacher_id} no longer exists")
        raw["distill"] = {
            **raw["distill"],
            "teacher": str(settings.data_dir / teacher.storage_path),
            "teacher_arch": teacher.arch,
        }
    return DistillConfig.model_validate(raw)


def classify_error(exc: BaseException, *, distilling: bool) -> tuple[FailureCode, str]:
    """Map an exception to a failure code and a readable one-paragraph message."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, DivergenceError):
        return FailureCode.NAN_LOSS, message
    if isinstance(exc, CheckpointError):
        return (FailureCode.TEACHER_LOAD if distilling else FailureCode.DATA_ERROR), message
    if isinstance(exc, DataError):
        teacherish = distilling and "teacher" in message
        return (FailureCode.TEACHER_LOAD if teacherish else FailureCode.DATA_ERROR), message
    if isinstance(exc, ConfigError):
        teacherish = distilling and "teacher" in message
        return (FailureCode.TEACHER_LOAD if teacherish else FailureCode.CONFIG_ERROR), message
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return FailureCode.OUT_OF_MEMORY, (
            f"out of memory: {message.splitlines()[0] if message else ''} "
            "- lower train.batch_size or data.image_size"
        ).strip()
    return FailureCode.INTERNAL, f"{type(exc).__name__}: {message}"


class _JobLogHandler(logging.Handler):
    """Copies engine/worker log records of this job into ``job_logs``."""

    def __init__(self, session_factory: sessionmaker[Session], job_id: str) -> None:
        super().__init__(level=logging.INFO)
        self.session_factory = session_factory
        self.job_id = job_id

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with self.session_factory() as session:
                JobRepo(session).log(self.job_id, record.levelname, self.format(record))
        except Exception:
            self.handleError(record)


@contextmanager
def _job_logging(session_factory: sessionmaker[Session], job_id: str) -> Iterator[None]:
    handler = _JobLogHandler(session_factory, job_id)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    loggers = [logging.getLogger("bmgkd_core"), logging.getLogger("worker")]
    old_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, old_levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _record_artifacts(session: Session, job_id: str, workdir: Path, data_dir: Path) -> None:
    for name, filename in ARTIFACT_FILES.items():
        path = workdir / filename
        if not path.is_file():
            continue
        existing = session.query(Artifact).filter_by(job_id=job_id, name=name).one_or_none()
        if existing is not None:
            session.delete(existing)
            session.flush()
        session.add(
            Artifact(
                job_id=job_id,
                name=name,
                path=str(path.relative_to(data_dir)),
                size_bytes=path.stat().st_size,
                sha256=_sha256(path),
            )
        )
    session.commit()


def run(
    job_id: str,
    *,
    settings: Settings,
    session_factory: sessionmaker[Session],
    worker: str,
    fit: FitFn | None = None,
) -> str:
    """Run one job to a terminal state (or leave it when another worker owns it).

    Returns a short outcome for the task log: ``skipped``, ``succeeded``, ``failed:<CODE>``,
    ``cancelled`` or ``lost`` (another worker took the job over; this one stopped).
    """
    if fit is None:
        from bmgkd_core import fit as engine_fit

        fit = engine_fit
    with session_factory() as session:
        repo = JobRepo(session)
        job = repo.claim(job_id, worker=worker, stale_after_s=settings.heartbeat_stale_s)
        if job is None:
            log.info("job %s: not claimable (finished, cancelled or held elsewhere)", job_id)
            return "skipped"
        distilling = job.teacher_id is not None
        workdir = settings.runs_dir / job_id
        resuming = (workdir / "resume.pt").is_file()
        repo.log(
            job_id,
            "INFO",
            f"attempt {job.attempt} on {worker}"
            + (" - resuming from resume.pt" if resuming else ""),
        )
        try:
            runner = _build_runner(session, job, settings, workdir, fit)
            weights = _weight_files(session, job, settings, workdir)
        except Exception as exc:
            code, message = classify_error(exc, distilling=distilling)
            repo.finish(
                job_id,
                worker=worker,
                status=JobStatus.failed,
                failure_code=code,
                failure_message=message,
            )
            return f"failed:{code}"
    return _execute(job_id, runner, weights, settings, session_factory, worker, distilling)


@dataclass(frozen=True)
class _WeightFiles:
    """Where a job's weights are, for its parameter counts (and its run folder)."""

    workdir: Path
    student: Path  # a model.pt
    teacher: Path | None  # a model.pt or a plain state dict


def _weight_files(session: Session, job: Job, settings: Settings, workdir: Path) -> _WeightFiles:
    student = workdir / "model.pt"
    if job.kind == JobKind.eval:  # an eval job scores its source job's model
        student = settings.runs_dir / str(job.source_job_id) / "model.pt"
    teacher = session.get(Teacher, job.teacher_id) if job.teacher_id is not None else None
    return _WeightFiles(
        workdir=workdir,
        student=student,
        teacher=settings.data_dir / teacher.storage_path if teacher is not None else None,
    )


def count_parameters(state_dict: dict[str, Any]) -> int:
    """Elements of the floating-point tensors of a state dict, BatchNorm statistics excluded."""
    return sum(
        int(t.numel())
        for key, t in state_dict.items()
        if t.is_floating_point() and not key.endswith(_BUFFER_SUFFIXES)
    )


def _count_params(job_id: str, files: _WeightFiles) -> dict[str, int | None] | None:
    """``{"student": N, "teacher": M | None}``; ``None`` when the student cannot be counted.

    Never raises: a count that fails is logged as a warning and left out.
    """
    try:
        from bmgkd_core.train.checkpoint import load_model_file, load_state_dict_file

        student = count_parameters(load_model_file(files.student).state_dict)
    except Exception as exc:
        log.warning("job %s: could not count the student's parameters: %s", job_id, exc)
        return None
    teacher: int | None = None
    if files.teacher is not None:
        try:
            teacher = count_parameters(load_state_dict_file(files.teacher))
        except Exception as exc:
            log.warning("job %s: could not count the teacher's parameters: %s", job_id, exc)
    return {"student": student, "teacher": teacher}


Runner = Callable[[list[Callback]], Any]


@dataclass(frozen=True)
class _EvalResult:
    metrics: dict[str, Any]
    steps: int = 0


def _build_runner(
    session: Session, job: Job, settings: Settings, workdir: Path, fit: FitFn
) -> Runner:
    """What the job does, as a function of its callbacks: ``fit`` or, for ``eval``, evaluate."""
    if job.kind != JobKind.eval:
        cfg = build_config(session, job, settings)
        return lambda callbacks: fit(cfg, workdir=workdir, callbacks=callbacks)
    dataset = session.get(Dataset, job.dataset_id)
    if dataset is None:
        raise DataError(f"dataset {job.dataset_id} no longer exists")
    checkpoint = settings.runs_dir / str(job.source_job_id) / "model.pt"
    data_root = settings.data_dir / dataset.storage_path
    spec = dict(job.config)

    def _evaluate(_callbacks: list[Callback]) -> _EvalResult:
        from bmgkd_core import evaluate

        workdir.mkdir(parents=True, exist_ok=True)
        metrics = evaluate(
            checkpoint,
            data=data_root,
            split=spec.get("split", "val"),
            image_size=spec.get("image_size"),
            device=spec.get("device", "auto"),
            batch_size=int(spec.get("batch_size", 4)),
            predictions_path=workdir / "predictions_val.json",
        )
        (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        return _EvalResult(metrics=metrics)

    return _evaluate


def _execute(
    job_id: str,
    runner: Runner,
    weights: _WeightFiles,
    settings: Settings,
    session_factory: sessionmaker[Session],
    worker: str,
    distilling: bool,
) -> str:
    heartbeat = Heartbeat(
        session_factory, job_id, worker=worker, interval_s=settings.heartbeat_interval_s
    )
    callback = DbProgressCallback(
        session_factory,
        job_id,
        worker=worker,
        heartbeat=heartbeat,
        interval_s=settings.progress_interval_s,
    )
    workdir = weights.workdir
    outcome: tuple[JobStatus, str | None, str | None, dict[str, Any] | None]
    with heartbeat, _job_logging(session_factory, job_id):
        try:
            heartbeat.beat()  # a cancel that arrived between claim and start stops at step 1
            result = runner([callback])
            metrics = dict(getattr(result, "metrics", {}) or {})
            doc: dict[str, Any] = {
                "metrics": metrics,
                "summary": flatten_metrics(metrics),
                "steps": getattr(result, "steps", 0),
            }
            params = _count_params(job_id, weights)
            if params is not None:
                doc["params"] = params
            outcome = (JobStatus.succeeded, None, None, doc)
        except Cancelled as exc:
            if heartbeat.lost.is_set() and not heartbeat.cancel_requested.is_set():
                log.warning("job %s: taken over by another worker; stopping here", job_id)
                return "lost"
            outcome = (JobStatus.cancelled, FailureCode.CANCELLED, str(exc), None)
        except Exception as exc:
            fcode, fmessage = classify_error(exc, distilling=distilling)
            log.error("job %s failed (%s): %s", job_id, fcode, fmessage)
            if fcode == FailureCode.INTERNAL:
                log.error("%s", "".join(traceback.format_exception(exc))[-8000:])
            outcome = (JobStatus.failed, fcode, fmessage, None)
    status, code, message, result_doc = outcome
    with session_factory() as session:
        if status == JobStatus.succeeded or workdir.is_dir():
            _record_artifacts(session, job_id, workdir, settings.data_dir)
        ok = JobRepo(session).finish(
            job_id,
            worker=worker,
            status=status,
            result=result_doc,
            failure_code=code,
            failure_message=message,
        )
    if not ok:
        return "lost"
    return status.value if code is None or status == JobStatus.cancelled else f"failed:{code}"
