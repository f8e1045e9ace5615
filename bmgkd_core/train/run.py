"""Everything one run needs, built once from the config: data, model, optimizer, AMP, state."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from bmgkd_core.config import DistillConfig
from bmgkd_core.data import (
    DetectionDataset,
    EpochSampler,
    build_loader,
    build_transforms,
    load_dataset,
)
from bmgkd_core.distill.distiller import Distiller
from bmgkd_core.distill.teacher import TeacherReport, load_teacher
from bmgkd_core.errors import ConfigError
from bmgkd_core.eval import CocoEvaluator, evaluate_detector
from bmgkd_core.models import build_detector, freeze_batchnorm, split_arch
from bmgkd_core.train.callbacks import TrainState
from bmgkd_core.train.optim import build_optimizer, build_scheduler

__all__ = [
    "PREDICTIONS_FILE",
    "TEACHER_PREDICTIONS_FILE",
    "RunParts",
    "amp_dtype_for",
    "build_distiller",
    "build_evaluator",
    "build_run_parts",
    "evaluate_parts",
    "evaluate_teacher",
]

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions_val.json"
TEACHER_PREDICTIONS_FILE = "teacher_predictions_val.json"


@dataclass
class RunParts:
    """The built pieces of a run.

    ``model`` is what the loop calls (the detector, or a distiller around it); ``student`` is
    what gets saved. With ``cfg.distill`` set, ``teacher_report`` describes the strict teacher
    load, and ``distiller`` is the :class:`Distiller` (``None`` for preset ``none``, whose
    baseline trains the bare student; the teacher was loaded and checked, then dropped).
    """

    cfg: DistillConfig
    device: torch.device
    workdir: Path
    model: nn.Module
    student: nn.Module
    train_loader: DataLoader[Any]
    sampler: EpochSampler
    val_loader: DataLoader[Any]
    val_dataset: DetectionDataset
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    state: TrainState
    num_classes: int
    class_names: tuple[str, ...]
    trainable: list[nn.Parameter] = field(default_factory=list)
    logf: IO[str] | None = None
    distiller: Distiller | None = None
    teacher_report: TeacherReport | None = None
    teacher_metrics: dict[str, Any] | None = None
    _evaluator: CocoEvaluator | None = None

    def val_evaluator(self) -> CocoEvaluator:
        """The val split's evaluator, built once (``evaluate_detector`` resets it per use)."""
        if self._evaluator is None:
            self._evaluator = build_evaluator(self.val_dataset)
        return self._evaluator

    def set_train_mode(self) -> None:
        """``train()`` the model, keeping frozen (ImageNet-initialised) BatchNorm in eval."""
        self.model.train()
        if self.cfg.model.backbone_weights is not None:
            backbone = self.student.get_submodule("backbone.body")
            freeze_batchnorm(backbone)


def amp_dtype_for(device: torch.device, enabled: bool, *, cpu: bool = False) -> torch.dtype | None:
    """The autocast dtype of a run, or ``None`` for full fp32.

    CUDA: bf16 where the device supports it, fp16 on older ones. CPU: bf16 only when ``cpu``
    (``train.cpu_amp``) is set too. ``None`` whenever ``enabled`` is false.
    """
    if not enabled:
        return None
    if device.type == "cpu":
        return torch.bfloat16 if cpu else None
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_run_parts(cfg: DistillConfig, device: torch.device, workdir: Path) -> RunParts:
    """Build data, model, optimizer, schedule and AMP state for ``cfg``.

    With ``cfg.distill`` set, the teacher is loaded strictly and checked against the classes
    (see :func:`build_distiller`); ``parts.model`` is then the distiller and ``parts.trainable``
    holds the student's and the adapters' parameters.

    Raises:
        DataError: the dataset cannot be read, or the teacher's class names differ.
        ConfigError: the data gives no full batch, or the teacher does not fit the run.
        CheckpointError: the teacher file is unreadable or its keys do not match.
    """
    d = cfg.data
    train_set = load_dataset(
        d.root,
        d.train_split,
        format=d.format,
        transforms=build_transforms(
            train=True, image_size=d.image_size, multi_scale=d.multi_scale, hflip_prob=d.hflip_prob
        ),
    )
    val_set = load_dataset(
        d.root,
        d.val_split,
        format=d.format,
        transforms=build_transforms(train=False, image_size=d.image_size),
    )
    cuda = device.type == "cuda"
    bs, workers, seed = cfg.train.batch_size, d.num_workers, cfg.train.seed
    train_loader, sampler = build_loader(
        train_set, batch_size=bs, train=True, num_workers=workers, seed=seed, device_is_cuda=cuda
    )
    val_loader, _ = build_loader(
        val_set, batch_size=bs, train=False, num_workers=workers, seed=seed, device_is_cuda=cuda
    )
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size={bs} is larger than the {len(train_set)} training images"
        )
    class_names = tuple(train_set.label_map.names)
    num_classes = len(class_names) + 1
    model = build_detector(
        cfg.model.arch,
        num_classes,
        image_size=d.image_size,
        backbone_weights=cfg.model.backbone_weights,
        box_batch_size_per_image=cfg.model.box_batch_size_per_image,
    ).to(device)
    distiller, teacher_report = build_distiller(cfg, model, class_names, device)
    if distiller is not None:
        trainable = distiller.trainable_parameters()
    else:
        trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, cfg.optim)
    total = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    amp_dtype = amp_dtype_for(device, cfg.train.amp, cpu=cfg.train.cpu_amp)
    state = TrainState(
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
        epochs=cfg.train.epochs,
        batch_size=bs,
        workdir=str(workdir),
    )
    return RunParts(
        cfg=cfg,
        device=device,
        workdir=workdir,
        model=model if distiller is None else distiller,
        student=model,
        train_loader=train_loader,
        sampler=sampler,
        val_loader=val_loader,
        val_dataset=val_set,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.optim, total),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        amp_dtype=amp_dtype,
        state=state,
        num_classes=num_classes,
        class_names=class_names,
        trainable=trainable,
        distiller=distiller,
        teacher_report=teacher_report,
    )


def build_distiller(
    cfg: DistillConfig, student: nn.Module, class_names: Sequence[str], device: torch.device
) -> tuple[Distiller | None, TeacherReport | None]:
    """Load and check the teacher of ``cfg.distill`` and wrap ``student`` in a :class:`Distiller`.

    Loading the teacher does not touch the global RNG, so with preset ``none`` the run equals
    plain training with the same seed.

    Returns:
        ``(None, None)`` without ``cfg.distill``; ``(None, report)`` when no term is enabled
        (preset ``none``: the teacher is validated, then dropped); else the distiller on
        ``device`` and the teacher's key report.
    """
    kd = cfg.distill
    if kd is None:
        return None, None
    teacher, report = load_teacher(
        kd, student_arch=cfg.model.arch, class_names=class_names, image_size=cfg.data.image_size
    )
    if not kd.enabled_terms():
        return None, report
    family, _ = split_arch(cfg.model.arch)
    distiller = Distiller(student.to(device), teacher.to(device), family=family, kd=kd)
    return distiller.to(device), report


def build_evaluator(dataset: DetectionDataset) -> CocoEvaluator:
    """A COCO evaluator for ``dataset``'s split, in its original category ids and names."""
    return CocoEvaluator(
        dataset.to_coco_gt(),
        label_to_category_id=dict(enumerate(dataset.label_map.category_ids, start=1)),
        class_names=dataset.label_map.names,
    )


def evaluate_teacher(parts: RunParts) -> dict[str, Any]:
    """COCO-evaluate the distiller's teacher on the val split.

    Writes the teacher's detections to ``workdir/teacher_predictions_val.json`` (COCO results
    format, as the student's ``predictions_val.json``).

    Returns:
        ``{"bbox": {...}}``, or ``{}`` (and no file) when the run has no distiller.
    """
    if parts.distiller is None:
        return {}
    evaluator = parts.val_evaluator()
    bbox = evaluate_detector(
        parts.distiller.teacher,
        parts.val_loader,
        evaluator,
        device=parts.device,
        amp_dtype=parts.amp_dtype,
    )
    evaluator.write_predictions(parts.workdir / TEACHER_PREDICTIONS_FILE)
    return {"bbox": bbox}


def evaluate_parts(parts: RunParts) -> dict[str, Any]:
    """COCO-evaluate the student on the val split; writes ``predictions_val.json``."""
    evaluator = parts.val_evaluator()
    bbox = evaluate_detector(
        parts.student, parts.val_loader, evaluator, device=parts.device, amp_dtype=parts.amp_dtype
    )
    evaluator.write_predictions(parts.workdir / PREDICTIONS_FILE)
    return {"bbox": bbox}
