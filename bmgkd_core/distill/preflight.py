"""Preflight of a distillation run: everything that can fail or surprise, before the long run.

:func:`run_preflight` builds the run exactly as :func:`bmgkd_core.train.loop.fit` would, then
reports the strict teacher load, the class check, the teacher's AP on val, the FPN shapes at every
distilled level with the adapters that get inserted, the loss terms of the first step, the peak
memory and time of one distillation step, and an ETA for the configured schedule. Nothing is
written; the student's updates are thrown away.
"""

from __future__ import annotations

import math
import resource
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bmgkd_core.config import DistillConfig
from bmgkd_core.distill.adapters import probe_levels
from bmgkd_core.distill.teacher import load_teacher
from bmgkd_core.errors import ConfigError
from bmgkd_core.eval import CocoEvaluator, evaluate_detector
from bmgkd_core.train.loop import resolve_device, seed_everything, train_step
from bmgkd_core.train.run import RunParts, build_run_parts

__all__ = ["PreflightReport", "run_preflight"]


@dataclass(frozen=True)
class PreflightReport:
    """What :func:`run_preflight` found (``to_dict()`` is the ``--json`` output).

    Attributes:
        device: Where the step ran.
        teacher: The teacher key report (:meth:`TeacherReport.to_dict`).
        classes: ``{"num_classes", "names", "match"}`` of the dataset vs the teacher.
        teacher_metrics: COCO metrics of the teacher on val (``{"bbox": {...}}``).
        teacher_eval_s: Seconds the teacher evaluation took.
        terms: The enabled distillation terms.
        levels: Per distilled level: names, student/teacher shapes on a real batch, adapter.
        adapters: The levels that get a non-identity adapter.
        first_step_losses: Loss terms (``task.*``, ``distill.*``, ``loss``) of the first step.
        step_time_s: Mean seconds of the timed steps (after a warm-up step).
        peak_memory_mb: CUDA: ``max_memory_allocated``; CPU: peak RSS growth during the steps.
        memory_kind: ``"cuda_max_allocated"`` or ``"cpu_peak_rss_delta"``.
        total_steps: Steps of the configured schedule.
        evaluations: Evaluations the schedule runs.
        eta_s: ``step_time_s × total_steps + evaluations × teacher_eval_s``.
    """

    device: str
    teacher: dict[str, Any]
    classes: dict[str, Any]
    teacher_metrics: dict[str, Any]
    teacher_eval_s: float
    terms: list[str]
    levels: list[dict[str, Any]]
    adapters: list[dict[str, Any]]
    first_step_losses: dict[str, float]
    step_time_s: float
    peak_memory_mb: float
    memory_kind: str
    total_steps: int
    evaluations: int
    eta_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def format_text(self) -> str:
        """Human-readable report (``bmgkd preflight`` without ``--json``)."""
        teacher_report = self.teacher.get("text", "")
        ap = self.teacher_metrics.get("bbox", {}).get("AP")
        lines = [
            teacher_report,
            f"classes: {self.classes['num_classes']} {self.classes['names'][:10]} "
            f"({'match' if self.classes['match'] else 'MISMATCH'})",
            f"teacher AP on val: {'n/a' if ap is None else f'{ap:.2f}'} "
            f"({self.teacher_eval_s:.1f} s)",
            f"terms: {', '.join(self.terms) or '(none: baseline)'}",
        ]
        for lv in self.levels:
            lines.append(
                f"  level {lv['level']} ({lv['name']}): student {lv['student_shape']} teacher "
                f"{lv['teacher_shape']} -> {lv['adapter']}"
            )
        losses = ", ".join(f"{k}={v:.4g}" for k, v in self.first_step_losses.items())
        lines += [
            f"first step: {losses}",
            f"step time: {self.step_time_s:.3f} s on {self.device}; peak memory "
            f"{self.peak_memory_mb:.0f} MB ({self.memory_kind})",
            f"schedule: {self.total_steps} steps + {self.evaluations} evaluation(s); "
            f"ETA {_format_duration(self.eta_s)}",
        ]
        return "\n".join(lines)


def run_preflight(
    cfg: DistillConfig, *, warmup_steps: int = 1, timed_steps: int = 2
) -> PreflightReport:
    """Build the run of ``cfg`` and measure it without training it.

    Args:
        cfg: A run config with a ``distill`` section.
        warmup_steps: Untimed steps first (the first one's losses are reported).
        timed_steps: Steps averaged for the step time and peak memory.

    Returns:
        The :class:`PreflightReport`.

    Raises:
        ConfigError: no ``distill`` section, or as :func:`bmgkd_core.train.loop.fit`.
        DataError, CheckpointError: as :func:`bmgkd_core.train.loop.fit`.
    """
    if cfg.distill is None:
        raise ConfigError("preflight needs a teacher: the config has no distill section")
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    with tempfile.TemporaryDirectory(prefix="bmgkd-preflight-") as tmp:
        parts = build_run_parts(cfg, device, Path(tmp))
    assert parts.teacher_report is not None
    teacher = _teacher_of(parts)
    tic = time.perf_counter()
    teacher_metrics = _evaluate_teacher(parts, teacher)
    teacher_eval_s = time.perf_counter() - tic
    batches = _batches(parts)
    images, _ = next(batches)
    levels = _level_shapes(parts, teacher, images)
    losses, step_time, peak_mb, kind = _time_steps(parts, batches, warmup_steps, timed_steps)
    evaluations = _count_evaluations(parts)
    report = parts.teacher_report
    return PreflightReport(
        device=str(device),
        teacher={**report.to_dict(), "text": report.format_text()},
        classes={
            "num_classes": len(parts.class_names),
            "names": list(parts.class_names),
            "match": True,  # load_teacher raised otherwise
        },
        teacher_metrics=teacher_metrics,
        teacher_eval_s=teacher_eval_s,
        terms=sorted(parts.distiller.terms) if parts.distiller is not None else [],
        levels=levels,
        adapters=[lv for lv in levels if lv["adapter"] != "identity"],
        first_step_losses=losses,
        step_time_s=step_time,
        peak_memory_mb=peak_mb,
        memory_kind=kind,
        total_steps=parts.state.total_steps,
        evaluations=evaluations,
        eta_s=step_time * parts.state.total_steps + evaluations * teacher_eval_s,
    )


def _teacher_of(parts: RunParts) -> nn.Module:
    """The distiller's teacher, or (preset ``none``) the teacher loaded again."""
    if parts.distiller is not None:
        return parts.distiller.teacher
    cfg = parts.cfg
    assert cfg.distill is not None
    teacher, _ = load_teacher(
        cfg.distill,
        student_arch=cfg.model.arch,
        class_names=parts.class_names,
        image_size=cfg.data.image_size,
    )
    return teacher.to(parts.device)


def _evaluate_teacher(parts: RunParts, teacher: nn.Module) -> dict[str, Any]:
    ds = parts.val_dataset
    evaluator = CocoEvaluator(
        ds.to_coco_gt(),
        label_to_category_id=dict(enumerate(ds.label_map.category_ids, start=1)),
        class_names=ds.label_map.names,
    )
    bbox = evaluate_detector(
        teacher, parts.val_loader, evaluator, device=parts.device, amp_dtype=parts.amp_dtype
    )
    return {"bbox": bbox}


def _batches(parts: RunParts) -> Iterator[tuple[list[Tensor], list[dict[str, Any]]]]:
    """Training batches on the device, cycling over epochs."""
    epoch = 0
    while True:
        parts.sampler.set_epoch(epoch)
        for images, targets in parts.train_loader:
            yield (
                [img.to(parts.device) for img in images],
                [
                    {k: v.to(parts.device) if isinstance(v, Tensor) else v for k, v in t.items()}
                    for t in targets
                ],
            )
        epoch += 1


@torch.no_grad()
def _level_shapes(
    parts: RunParts, teacher: nn.Module, images: list[Tensor]
) -> list[dict[str, Any]]:
    """FPN shapes of both models on one real batch (the student's eval-mode transform)."""
    assert parts.cfg.distill is not None
    student = parts.student
    transform = student.get_submodule("transform")
    was_training = transform.training
    transform.eval()
    try:
        image_list, _ = transform(images)
    finally:
        transform.train(was_training)
    pairs = probe_levels(
        student.get_submodule("backbone"),
        teacher.get_submodule("backbone"),
        image_size=parts.cfg.data.image_size,
        levels=parts.cfg.distill.levels,
        batch=image_list.tensors,
    )
    return [pair.to_dict() for pair in pairs]


def _time_steps(
    parts: RunParts,
    batches: Iterator[tuple[list[Tensor], list[dict[str, Any]]]],
    warmup_steps: int,
    timed_steps: int,
) -> tuple[dict[str, float], float, float, str]:
    """First-step losses, mean step time, peak memory (MB) and its kind."""
    cuda = parts.device.type == "cuda"
    parts.set_train_mode()
    if cuda:
        torch.cuda.reset_peak_memory_stats(parts.device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    first: dict[str, float] = {}
    for _ in range(max(warmup_steps, 1)):
        losses = train_step(parts, *next(batches))
        first = first or losses
    elapsed = 0.0
    for _ in range(max(timed_steps, 1)):
        images, targets = next(batches)
        if cuda:
            torch.cuda.synchronize(parts.device)
        tic = time.perf_counter()
        train_step(parts, images, targets)
        if cuda:
            torch.cuda.synchronize(parts.device)
        elapsed += time.perf_counter() - tic
    if cuda:
        peak_mb, kind = torch.cuda.max_memory_allocated(parts.device) / 2**20, "cuda_max_allocated"
    else:  # ru_maxrss is in KiB on Linux
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        peak_mb, kind = growth / 1024, "cpu_peak_rss_delta"
    return first, elapsed / max(timed_steps, 1), peak_mb, kind


def _count_evaluations(parts: RunParts) -> int:
    """Evaluations ``fit`` runs: every ``eval_every_epochs`` epochs and/or at the end."""
    every, final = parts.cfg.train.eval_every_epochs, parts.cfg.train.final_eval
    epochs_run = math.ceil(parts.state.total_steps / parts.state.steps_per_epoch)
    return sum(
        1
        for epoch in range(epochs_run)
        if (final and epoch == epochs_run - 1) or (every and (epoch + 1) % every == 0)
    )


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
