"""``fit``: a plain, readable training loop around a torchvision-contract detector.

One step: move the batch, forward under autocast, sum the loss terms, check they are finite,
backward, clip, step, schedule, log. Everything around it (data, evaluation, checkpoints) is built
from the :class:`~bmgkd_core.config.DistillConfig` and reported through callbacks.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bmgkd_core.config import DistillConfig
from bmgkd_core.errors import Cancelled, ConfigError, DivergenceError
from bmgkd_core.train.callbacks import Callback, TrainState
from bmgkd_core.train.checkpoint import (
    MODEL_FILE,
    RESUME_FILE,
    capture_rng_state,
    load_resume,
    restore_rng_state,
    save_model,
    save_resume,
)
from bmgkd_core.train.run import RunParts, build_run_parts, evaluate_parts, evaluate_teacher

__all__ = ["RunResult", "fit", "resolve_device", "seed_everything", "train_step"]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
TEACHER_METRICS_FILE = "teacher_metrics.json"
PREDICTIONS_FILE = "predictions_val.json"
# Fields that may change between a run and its resume without changing its results.
_RESUME_FREE_FIELDS = {
    ("data", "root"),
    ("data", "num_workers"),
    ("train", "device"),
    ("train", "checkpoint_every_steps"),
    ("train", "log_every_steps"),
}


@dataclass(frozen=True)
class RunResult:
    """What :func:`fit` returns: the run folder, steps done and the final metrics."""

    workdir: Path
    steps: int
    epochs: int
    metrics: dict[str, Any]
    model_path: Path


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without CUDA is a ConfigError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_step(
    parts: RunParts, images: list[torch.Tensor], targets: list[dict[str, Any]]
) -> dict[str, float]:
    """One optimizer step; returns the loss terms (prefixed ``task.*``) as floats.

    Raises:
        DivergenceError: a loss term is NaN or infinite (nothing is stepped then).
    """
    with torch.autocast(
        parts.device.type, dtype=parts.amp_dtype, enabled=parts.amp_dtype is not None
    ):
        loss_dict = parts.model(images, targets)
    names = [k if "." in k else f"task.{k}" for k in loss_dict]
    terms = list(loss_dict.values())
    total = torch.stack([t.float() for t in terms]).sum()
    values = torch.stack([t.detach().float() for t in [*terms, total]]).tolist()
    losses = dict(zip([*names, "loss"], values, strict=True))
    if not all(math.isfinite(v) for v in values):
        raise DivergenceError(
            f"non-finite loss at step {parts.state.step + 1}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in losses.items()),
            losses=losses,
            step=parts.state.step + 1,
        )
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(total).backward()  # type: ignore[no-untyped-call]
    clip = parts.cfg.optim.grad_clip_norm
    if clip is not None:
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(parts.trainable, clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.scheduler.step()
    return losses


def fit(
    cfg: DistillConfig,
    *,
    workdir: str | Path,
    callbacks: Sequence[Callback] = (),
    resume: bool = True,
) -> RunResult:
    """Train ``cfg.model`` on ``cfg.data``, evaluating on the val split; write the run folder.

    The folder gets ``config.json``, ``log.jsonl`` (one JSON line per step and per evaluation),
    ``resume.pt`` (each epoch, every ``checkpoint_every_steps`` and on cancel), ``model.pt``,
    ``metrics.json`` (``{"bbox": {...}}``) and ``predictions_val.json``.

    When distilling (``cfg.distill`` with at least one term), ``log.jsonl`` starts with a
    ``{"type": "distill_setup"}`` record (terms, levels, adapters, teacher key report), the
    teacher is evaluated once on val (cached in ``teacher_metrics.json``, so a resume does not
    redo it; its detections go to ``teacher_predictions_val.json``), step records carry
    ``"diag"`` (spec §6 diagnostics), ``resume.pt`` holds the adapters and ``metrics.json`` is
    ``{"bbox": student, "teacher": {"bbox": teacher}}``.

    Args:
        cfg: The run configuration.
        workdir: The run folder (created if missing).
        callbacks: Hooks, called in order.
        resume: Continue from ``workdir/resume.pt`` when it exists.

    Returns:
        A :class:`RunResult` with the final metrics.

    Raises:
        ConfigError, DataError, CheckpointError: bad input, before any training.
        DivergenceError: a non-finite loss.
        Cancelled: a callback asked to stop; ``resume.pt`` was written first.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    parts = build_run_parts(cfg, device, workdir)
    if resume and (workdir / RESUME_FILE).is_file():
        _load_resume_into(parts, workdir / RESUME_FILE)
    (workdir / CONFIG_FILE).write_text(cfg.model_dump_json(indent=2) + "\n")
    _truncate_log(workdir / LOG_FILE, parts.state.step)
    error: BaseException | None = None
    try:
        with (workdir / LOG_FILE).open("a", encoding="utf-8") as logf:
            parts.logf = logf
            _start_distillation(parts)
            for cb in callbacks:
                cb.on_train_start(parts.state)
            metrics = _run_epochs(parts, callbacks)
        return _finish(parts, metrics)
    except BaseException as exc:
        error = exc
        raise
    finally:
        for cb in callbacks:
            cb.on_train_end(parts.state, error)


def _run_epochs(parts: RunParts, callbacks: Sequence[Callback]) -> dict[str, Any]:
    state, cfg = parts.state, parts.cfg
    metrics: dict[str, Any] | None = None
    while state.step < state.total_steps:
        epoch = state.step // state.steps_per_epoch
        state.epoch = epoch
        parts.sampler.set_epoch(epoch)
        parts.sampler.set_start((state.step - epoch * state.steps_per_epoch) * cfg.train.batch_size)
        _train_epoch(parts, callbacks)
        finished = state.step >= state.total_steps
        every = cfg.train.eval_every_epochs
        metrics = None
        if (finished and cfg.train.final_eval) or (every and (epoch + 1) % every == 0):
            metrics = _evaluate(parts)
        _save_resume(parts)
        for cb in callbacks:
            cb.on_epoch_end(state, metrics)
    if metrics is None and cfg.train.final_eval:
        metrics = _evaluate(parts)
    return metrics or {}


def _train_epoch(parts: RunParts, callbacks: Sequence[Callback]) -> None:
    state, cfg = parts.state, parts.cfg
    epoch_end = (state.epoch + 1) * state.steps_per_epoch
    parts.set_train_mode()
    tic = time.perf_counter()
    for images, targets in parts.train_loader:
        images = [img.to(parts.device, non_blocking=True) for img in images]
        targets = [{k: _to(v, parts.device) for k, v in t.items()} for t in targets]
        lr = parts.optimizer.param_groups[0]["lr"]
        losses = train_step(parts, images, targets)
        toc = time.perf_counter()
        state.step += 1
        state.lr, state.losses = lr, losses
        _update_speed(state, len(images) / max(toc - tic, 1e-9))
        tic = toc
        if state.step % cfg.train.log_every_steps == 0 or state.step == state.total_steps:
            record = {
                "type": "step",
                "epoch": state.epoch,
                "step": state.step,
                "lr": lr,
                "losses": losses,
                "images_per_s": round(state.images_per_s, 3),
            }
            if parts.distiller is not None:
                record["diag"] = parts.distiller.last_diagnostics()
            _log(parts, record)
        for cb in callbacks:
            cb.on_step_end(state)
        if any(cb.should_stop() for cb in callbacks):
            _save_resume(parts)
            raise Cancelled(f"stopped by request after step {state.step}; resume.pt written")
        if state.step >= min(epoch_end, state.total_steps):
            break
        every = cfg.train.checkpoint_every_steps
        if every and state.step % every == 0:
            _save_resume(parts)


def _update_speed(state: TrainState, images_per_s: float) -> None:
    # Exponential moving average, seeded by the first measurement.
    ema = state.images_per_s
    state.images_per_s = images_per_s if ema == 0 else 0.9 * ema + 0.1 * images_per_s
    remaining_images = (state.total_steps - state.step) * state.batch_size
    state.eta_s = remaining_images / max(state.images_per_s, 1e-9)


def _evaluate(parts: RunParts) -> dict[str, Any]:
    metrics = evaluate_parts(parts)
    state = parts.state
    state.metrics = metrics
    _log(parts, {"type": "eval", "epoch": state.epoch, "step": state.step, **metrics})
    return metrics


def _start_distillation(parts: RunParts) -> None:
    """Log the distiller's set-up and evaluate the teacher once (cached in the run folder)."""
    if parts.distiller is None:
        return
    report = parts.teacher_report.to_dict() if parts.teacher_report is not None else None
    setup = {"type": "distill_setup", "step": parts.state.step, **parts.distiller.describe()}
    _log(parts, {**setup, "teacher": report})
    cache = parts.workdir / TEACHER_METRICS_FILE
    if cache.is_file():
        parts.teacher_metrics = json.loads(cache.read_text(encoding="utf-8"))
        return
    rng = capture_rng_state()  # evaluation must not shift the training run's random stream
    try:
        parts.teacher_metrics = evaluate_teacher(parts)
    finally:
        restore_rng_state(rng)
    _write_json(cache, parts.teacher_metrics)
    _log(parts, {"type": "teacher_eval", "step": parts.state.step, **parts.teacher_metrics})


def _finish(parts: RunParts, metrics: dict[str, Any]) -> RunResult:
    workdir, cfg = parts.workdir, parts.cfg
    if metrics and parts.teacher_metrics:
        metrics = {**metrics, "teacher": parts.teacher_metrics}
    save_model(
        workdir / MODEL_FILE,
        parts.student,
        arch=cfg.model.arch,
        num_classes=parts.num_classes,
        class_names=parts.class_names,
        image_size=cfg.data.image_size,
    )
    if metrics:
        _write_json(workdir / METRICS_FILE, metrics)
    return RunResult(
        workdir=workdir,
        steps=parts.state.step,
        epochs=math.ceil(parts.state.step / parts.state.steps_per_epoch),
        metrics=metrics,
        model_path=workdir / MODEL_FILE,
    )


def _save_resume(parts: RunParts) -> None:
    extra = {} if parts.distiller is None else {"adapters": parts.distiller.adapters.state_dict()}
    save_resume(
        parts.workdir / RESUME_FILE,
        {
            **extra,
            "model": parts.student.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "step": parts.state.step,
            "epoch": parts.state.epoch,
            "rng": capture_rng_state(),
            "config": parts.cfg.model_dump_json(),
        },
    )


def _load_resume_into(parts: RunParts, path: Path) -> None:
    ckpt = load_resume(path)
    _check_same_config(parts.cfg, DistillConfig.model_validate_json(ckpt["config"]), path)
    parts.student.load_state_dict(ckpt["model"])
    if parts.distiller is not None and "adapters" in ckpt:
        parts.distiller.adapters.load_state_dict(ckpt["adapters"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    parts.scaler.load_state_dict(ckpt["scaler"])
    parts.state.step = int(ckpt["step"])
    parts.state.epoch = int(ckpt["epoch"])
    restore_rng_state(ckpt["rng"])
    log.info("resumed from %s at step %d", path, parts.state.step)


def _check_same_config(cfg: DistillConfig, saved: DistillConfig, path: Path) -> None:
    new, old = cfg.model_dump(), saved.model_dump()
    diffs = [
        f"{section}: {old[section]!r} -> {new[section]!r}"
        for section in new
        if isinstance(new[section], dict) != isinstance(old[section], dict)
    ]
    new = {k: v for k, v in new.items() if isinstance(v, dict) and isinstance(old[k], dict)}
    diffs += [
        f"{section}.{key}: {old[section][key]!r} -> {new[section][key]!r}"
        for section in new
        if isinstance(new[section], dict)
        for key in new[section]
        if (section, key) not in _RESUME_FREE_FIELDS and new[section][key] != old[section][key]
    ]
    if diffs:
        raise ConfigError(f"{path}: cannot resume with a different config: " + "; ".join(diffs))


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (a crash after the last checkpoint).

    A line torn by a crash mid-write does not parse and is dropped too.
    """
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [ln for ln in lines if _logged_step(ln) <= step]
    if len(kept) != len(lines):
        path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")


def _logged_step(line: str) -> float:
    """The ``step`` of a log line; ``inf`` for a blank or torn line, so it is dropped."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return math.inf
    return float(record.get("step", 0)) if isinstance(record, dict) else math.inf


def _log(parts: RunParts, record: dict[str, Any]) -> None:
    assert parts.logf is not None
    parts.logf.write(json.dumps(record, allow_nan=True) + "\n")
    parts.logf.flush()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
