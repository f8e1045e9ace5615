"""Torch-free run configuration (pydantic), shared by the CLI, the worker and the API.

The models validate once and round-trip through JSON: ``DistillConfig.model_validate_json(
cfg.model_dump_json())`` gives an equal object. Nothing here imports torch, so the API may import
this module alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "DataConfig",
    "DistillConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
]

BACKBONES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "mobilenet_v3_large",
)
FAMILIES: tuple[str, ...] = ("fasterrcnn", "retinanet", "gfl")
ARCHITECTURES: tuple[str, ...] = tuple(f"{f}_{b}_fpn" for f in FAMILIES for b in BACKBONES)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where the data is and how images are prepared.

    ``image_size`` is the longer image side after an aspect-preserving resize, used for training
    and evaluation alike (torchvision's 800/1333 default never applies). ``multi_scale`` lists
    extra training sizes picked at random per image.
    """

    root: str
    format: Literal["auto", "coco", "voc"] = "auto"
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = Field(default=512, ge=32, le=4096)
    multi_scale: tuple[int, ...] = ()
    hflip_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    num_workers: int = Field(default=2, ge=0, le=64)

    @model_validator(mode="after")
    def _check_scales(self) -> DataConfig:
        bad = [s for s in self.multi_scale if not 32 <= s <= 4096]
        if bad:
            raise ValueError(f"data.multi_scale: sizes must be in [32, 4096], got {bad}")
        return self


class ModelConfig(_Strict):
    """Which detector to build.

    ``backbone_weights`` is a local path to an ImageNet state dict of the backbone (nothing is
    downloaded). With it, the stem and first stage are frozen and BatchNorm is kept in eval mode
    (mmdet's ``frozen_stages=1, norm_eval=True``); without it, every layer trains.
    """

    arch: str
    backbone_weights: str | None = None

    @model_validator(mode="after")
    def _check_arch(self) -> ModelConfig:
        if self.arch not in ARCHITECTURES:
            raise ValueError(
                f"model.arch: unknown architecture {self.arch!r}; "
                f"choose one of: {', '.join(ARCHITECTURES)}"
            )
        return self


class OptimConfig(_Strict):
    """Optimizer and learning-rate schedule.

    The schedule is linear warm-up for ``warmup_steps`` steps from ``lr * warmup_ratio``, then
    ``step`` (×``gamma`` at each fraction of training in ``milestones``) or ``cosine`` to 0.
    """

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.01, gt=0.0, le=10.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=1e-4, ge=0.0, le=1.0)
    warmup_steps: int = Field(default=500, ge=0)
    warmup_ratio: float = Field(default=0.001, gt=0.0, le=1.0)
    scheduler: Literal["step", "cosine", "constant"] = "step"
    milestones: tuple[float, ...] = (8 / 12, 11 / 12)
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)
    grad_clip_norm: float | None = Field(default=35.0, gt=0.0)

    @model_validator(mode="after")
    def _check_milestones(self) -> OptimConfig:
        if any(not 0.0 < m < 1.0 for m in self.milestones):
            raise ValueError(
                f"optim.milestones: fractions of training in (0, 1), got {self.milestones}"
            )
        return self


class TrainConfig(_Strict):
    """Loop settings: length, batch, device, precision, seed and evaluation cadence."""

    epochs: int = Field(default=12, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=2, ge=1, le=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    seed: int = 0
    eval_every_epochs: int = Field(default=1, ge=0)
    final_eval: bool = True
    checkpoint_every_steps: int | None = Field(default=None, ge=1)
    log_every_steps: int = Field(default=1, ge=1)


class DistillConfig(_Strict):
    """The whole run: data, model (the student), optimizer and loop.

    Plain training is the same run with no teacher. JSON round-trips exactly.
    """

    version: Literal[1] = 1
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
