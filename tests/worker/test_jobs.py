"""``worker.jobs.run`` without a broker: claim, idempotency, progress, failure mapping, cancel."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db.base import utcnow
from api.db.models import Artifact, Job, JobLog, JobStatus, MetricPoint
from api.queue import FakeQueue
from api.settings import Settings
from bmgkd_core.errors import Cancelled, DataError, DivergenceError
from bmgkd_core.train.callbacks import Callback, TrainState
from worker import jobs
from worker.sweeper import sweep_once


def _job(factory: sessionmaker[Session], job_id: str) -> Job:
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _run(settings: Settings, factory: sessionmaker[Session], job_id: str, **kw: Any) -> str:
    return jobs.run(job_id, settings=settings, session_factory=factory, worker="w1", **kw)


def test_run_real_fit_tiny_job_succeeds_with_artifacts_metrics_and_logs(
    settings: Settings, factory: sessionmaker[Session], make_job: Callable[..., str]
) -> None:
    job_id = make_job()
    assert _run(settings, factory, job_id) == "succeeded"
    job = _job(factory, job_id)
    assert job.status == JobStatus.succeeded
    assert (job.attempt, job.step, job.total_steps, job.progress) == (1, 2, 2, 1.0)
    assert job.result is not None and "val.AP" in job.result["summary"]
    # Parameter counts from the state dicts (a train job has no teacher).
    assert job.result["params"]["student"] > 0
    assert job.result["params"]["teacher"] is None
    with factory() as session:
        names = set(
            session.execute(select(Artifact.name).where(Artifact.job_id == job_id)).scalars()
        )
        series = set(
            session.execute(select(MetricPoint.name).where(MetricPoint.job_id == job_id)).scalars()
        )
        logs = list(
            session.execute(select(JobLog.message).where(JobLog.job_id == job_id)).scalars()
        )
    assert {"model.pt", "metrics.json", "config.json", "log.jsonl"} <= names
    assert {"loss", "lr", "val.AP", "val.AP50"} <= series
    assert any("attempt 1" in m for m in logs)
    # Re-delivery of the same message is a no-op.
    assert _run(settings, factory, job_id) == "skipped"
    assert _job(factory, job_id).attempt == 1


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (DivergenceError("loss is nan", losses={"loss": float("nan")}, step=3), "NAN_LOSS"),
        (DataError("annotations/train.json: broken"), "DATA_ERROR"),
        (MemoryError("cannot allocate"), "OUT_OF_MEMORY"),
        (RuntimeError("boom"), "INTERNAL"),
    ],
)
def test_run_engine_error_maps_to_failure_code(
    settings: Settings,
    factory: sessionmaker[Session],
    make_job: Callable[..., str],
    error: BaseException,
    code: str,
) -> None:
    def fit(cfg: Any, *, workdir: Path, callbacks: list[Callback]) -> Any:
        raise error

    job_id = make_job()
    assert _run(settings, factory, job_id, fit=fit) == f"failed:{code}"
    job = _job(factory, job_id)
    assert job.status == JobStatus.failed
    assert job.failure_code == code
    assert job.failure_message and str(error).split()[0] in job.failure_message


def _looping_fit(steps: int = 10_000, step_s: float = 0.01) -> Callable[..., Any]:
    def fit(cfg: Any, *, workdir: Path, callbacks: list[Callback]) -> Any:
        state = TrainState(total_steps=steps, steps_per_epoch=steps, epochs=1)
        for cb in callbacks:
            cb.on_train_start(state)
        for step in range(1, steps + 1):
            time.sleep(step_s)
            state.step = step
            state.losses = {"loss": 1.0 / step}
            for cb in callbacks:
                cb.on_step_end(state)
            if any(cb.should_stop() for cb in callbacks):
                raise Cancelled(f"stopped after step {step}")
        raise AssertionError("never cancelled")

    return fit


def test_run_cancel_requested_stops_within_seconds(
    settings: Settings, factory: sessionmaker[Session], make_job: Callable[..., str]
) -> None:
    job_id = make_job()
    result: list[str] = []
    t = threading.Thread(
        target=lambda: result.append(_run(settings, factory, job_id, fit=_looping_fit()))
    )
    t.start()
    deadline = time.monotonic() + 10
    while _job(factory, job_id).status != JobStatus.running and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    with factory() as session:
        from api.db.repo import JobRepo

        assert JobRepo(session).request_cancel(job_id) == JobStatus.running
    tic = time.monotonic()
    t.join(timeout=10)
    assert not t.is_alive()
    assert time.monotonic() - tic < 5
    job = _job(factory, job_id)
    assert result == ["cancelled"]
    assert (job.status, job.failure_code) == (JobStatus.cancelled, "CANCELLED")
    assert job.step > 0


def test_claim_stale_running_job_is_taken_over_with_next_attempt(
    settings: Settings, factory: sessionmaker[Session], make_job: Callable[..., str]
) -> None:
    job_id = make_job()
    with factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.running,
                attempt=1,
                worker="dead",
                heartbeat_at=utcnow() - timedelta(seconds=30),
            )
        )
        session.commit()
    seen: list[int] = []

    def fit(cfg: Any, *, workdir: Path, callbacks: list[Callback]) -> Any:
        seen.append(_job(factory, job_id).attempt)
        return type("R", (), {"metrics": {}, "steps": 0})()

    assert _run(settings, factory, job_id, fit=fit) == "succeeded"
    assert seen == [2]


def test_claim_running_job_with_fresh_heartbeat_is_skipped(
    settings: Settings, factory: sessionmaker[Session], make_job: Callable[..., str]
) -> None:
    job_id = make_job()
    with factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.running, attempt=1, worker="alive", heartbeat_at=utcnow())
        )
        session.commit()
    assert _run(settings, factory, job_id, fit=_looping_fit()) == "skipped"
    assert _job(factory, job_id).worker == "alive"


def test_sweep_stale_job_requeued_then_failed_when_out_of_attempts(
    settings: Settings, factory: sessionmaker[Session], make_job: Callable[..., str]
) -> None:
    job_id = make_job()
    stale = utcnow() - timedelta(seconds=60)
    with factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.running, attempt=1, worker="dead", heartbeat_at=stale)
        )
        session.commit()
    queue = FakeQueue()
    assert sweep_once(settings=settings, session_factory=factory, queue=queue)["requeued"] == 1
    assert queue.sent == [("train.run", job_id, "cpu")]
    assert _job(factory, job_id).status == JobStatus.queued  # not re-sent on every pass
    assert sweep_once(settings=settings, session_factory=factory, queue=queue)["requeued"] == 0
    assert len(queue.sent) == 1
    with factory() as session:  # claimed again, and that worker died too, out of attempts
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.running, heartbeat_at=stale, attempt=settings.max_attempts)
        )
        session.commit()
    assert sweep_once(settings=settings, session_factory=factory, queue=queue)["lost"] == 1
    job = _job(factory, job_id)
    assert (job.status, job.failure_code) == (JobStatus.failed, "WORKER_LOST")


def test_count_parameters_counts_float_parameters_not_batchnorm_statistics() -> None:
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = {**model.state_dict(), "extra.int_index": torch.arange(5)}
    # conv 4*3*3*3 + 4, BN weight 4 + bias 4; not running_mean/var, num_batches_tracked, ints
    assert jobs.count_parameters(state) == 108 + 4 + 4 + 4
    assert jobs.count_parameters(state) == sum(p.numel() for p in model.parameters())


def test_run_succeeds_without_params_when_counting_fails(
    settings: Settings, factory: sessionmaker[Session], make_job: Callable[..., str]
) -> None:
    def fake_fit(cfg: Any, *, workdir: Path, callbacks: Any) -> Any:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "model.pt").write_bytes(b"not a checkpoint")
        return type("R", (), {"metrics": {"bbox": {"AP": 1.0}}, "steps": 1})()

    job_id = make_job()
    assert _run(settings, factory, job_id, fit=fake_fit) == "succeeded"
    job = _job(factory, job_id)
    assert job.result is not None and "params" not in job.result
    with factory() as session:
        logs = list(
            session.execute(select(JobLog.message).where(JobLog.job_id == job_id)).scalars()
        )
    assert any("could not count the student's parameters" in m for m in logs)


def test_count_params_reads_model_file_and_plain_state_dict_teacher(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from bmgkd_core.train.checkpoint import save_model

    student, teacher = nn.Linear(4, 2), nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8))
    save_model(
        tmp_path / "model.pt", student, arch="x", num_classes=2, class_names=["a"], image_size=64
    )
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    files = jobs._WeightFiles(tmp_path, tmp_path / "model.pt", tmp_path / "teacher.pt")
    assert jobs._count_params("j", files) == {"student": 10, "teacher": 32 + 16}
    broken = jobs._WeightFiles(tmp_path, tmp_path / "model.pt", tmp_path / "missing.pt")
    assert jobs._count_params("j", broken) == {"student": 10, "teacher": None}


def test_sweep_stale_job_with_pending_cancel_becomes_cancelled(
    settings: Settings, factory: sessionmaker[Session], make_job: Callable[..., str]
) -> None:
    job_id = make_job()
    stale = utcnow() - timedelta(seconds=60)
    with factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.running,
                attempt=1,
                worker="dead",
                heartbeat_at=stale,
                cancel_requested=True,
            )
        )
        session.commit()
    queue = FakeQueue()
    assert sweep_once(settings=settings, session_factory=factory, queue=queue)["cancelled"] == 1
    assert queue.sent == []  # not re-sent: no claim would take it
    job = _job(factory, job_id)
    assert (job.status, job.failure_code) == (JobStatus.cancelled, "CANCELLED")
