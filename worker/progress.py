"""``DbProgressCallback``: throttled progress/metric writes, a heartbeat thread and cancel checks.

The heartbeat runs on its own thread (own DB session), so a long evaluation or data loading
never makes a live job look dead. It also reads the cancel flag; ``should_stop`` (polled by the
loop after every step) answers from memory, so cancelling costs no query per step.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.db.repo import JobRepo, Progress
from bmgkd_core.train.callbacks import Callback, TrainState

__all__ = ["DbProgressCallback", "Heartbeat", "flatten_metrics"]

log = logging.getLogger(__name__)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "val") -> dict[str, float]:
    """``{"bbox": {"AP": 0.3}, "teacher": {"bbox": {...}}}`` -> ``{"val.AP": 0.3, ...}``."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            sub = prefix if key == "bbox" else f"{prefix}.{key}" if key != "teacher" else "teacher"
            out.update(flatten_metrics(value, sub))
        elif isinstance(value, int | float) and math.isfinite(float(value)):
            out[f"{prefix}.{key}"] = float(value)
    return out


class Heartbeat:
    """Background thread: refresh ``heartbeat_at`` every ``interval_s`` and read the cancel flag."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        job_id: str,
        *,
        worker: str,
        interval_s: float,
    ) -> None:
        self.session_factory = session_factory
        self.job_id = job_id
        self.worker = worker
        self.interval_s = interval_s
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def beat(self) -> None:
        with self.session_factory() as session:
            ours, cancel = JobRepo(session).heartbeat(self.job_id, worker=self.worker)
        if cancel:
            self.cancel_requested.set()
        if not ours:
            self.lost.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # a DB blip must not kill the job; the next beat retries
                log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)


class DbProgressCallback(Callback):
    """Writes step/epoch/ETA and mean losses since the last write at most every ``interval_s``;
    evaluation metrics are written at once. ``should_stop`` is True once a cancel was requested
    or another worker took the job over."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        job_id: str,
        *,
        worker: str,
        heartbeat: Heartbeat,
        interval_s: float = 2.0,
    ) -> None:
        self.session_factory = session_factory
        self.job_id = job_id
        self.worker = worker
        self.heartbeat = heartbeat
        self.interval_s = interval_s
        self._last_write = -math.inf
        self._sums: dict[str, float] = {}
        self._count = 0

    def _write(self, state: TrainState, points: list[tuple[int, str, float]]) -> None:
        progress = Progress(
            epoch=state.epoch,
            step=state.step,
            total_steps=state.total_steps,
            eta_s=state.eta_s,
            images_per_s=state.images_per_s or None,
        )
        with self.session_factory() as session:
            JobRepo(session).update_progress(
                self.job_id, worker=self.worker, progress=progress, points=points
            )
        self._last_write = time.monotonic()

    def on_train_start(self, state: TrainState) -> None:
        self._write(state, [])

    def on_step_end(self, state: TrainState) -> None:
        for name, value in state.losses.items():
            if math.isfinite(value):
                self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += 1
        due = time.monotonic() - self._last_write >= self.interval_s
        if due or state.step >= state.total_steps:
            self._flush(state)

    def _flush(self, state: TrainState) -> None:
        if self._count == 0:
            return
        points = [(state.step, name, s / self._count) for name, s in self._sums.items()]
        points.append((state.step, "lr", state.lr))
        if state.images_per_s:
            points.append((state.step, "images_per_s", state.images_per_s))
        self._sums, self._count = {}, 0
        self._write(state, points)

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, Any] | None) -> None:
        self._flush(state)
        if metrics:
            points = [(state.step, n, v) for n, v in flatten_metrics(metrics).items()]
            self._write(state, points)

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        try:
            self._flush(state)
        except Exception:
            log.warning("final progress write for job %s failed", self.job_id, exc_info=True)

    def should_stop(self) -> bool:
        return self.heartbeat.cancel_requested.is_set() or self.heartbeat.lost.is_set()
