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
    "PRESETS",
    "DataConfig",
    "DistillConfig",
    "KDConfig",
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

    ``box_batch_size_per_image`` is the number of RoIs the Faster R-CNN box head samples per
    training image (torchvision's and mmdet's 512). It changes training cost, not the weights:
    ``model.pt`` loads into the stock builder whatever it was. Smaller values (detectron2 uses
    128 for small datasets) make CPU training several times cheaper, since the box head and
    RoIAlign's backward dominate a Faster R-CNN step on the CPU. Other families ignore it.
    """

    arch: str
    backbone_weights: str | None = None
    box_batch_size_per_image: int = Field(default=512, ge=1, le=4096)

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
    warmup_steps: int = Field(default=500, ge=0, le=100_000_000)
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
    """Loop settings: length, batch, device, precision, seed and evaluation cadence.

    ``amp`` is mixed precision on CUDA (bf16, or fp16 with a grad scaler on GPUs without bf16).
    ``cpu_amp`` (with ``amp``) also runs the forward under bf16 autocast on the CPU: faster on
    CPUs with AMX or AVX512-BF16 (measured by ``bench/cpu_speed.py``), slower on CPUs that
    emulate bf16, so it is off by default. Weights, optimizer state and losses stay fp32.
    """

    epochs: int = Field(default=12, ge=1, le=100_000)
    max_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    batch_size: int = Field(default=2, ge=1, le=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    cpu_amp: bool = False
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    eval_every_epochs: int = Field(default=1, ge=0, le=100_000)
    final_eval: bool = True
    checkpoint_every_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    log_every_steps: int = Field(default=1, ge=1, le=100_000_000)


Preset = Literal["bmgkd", "fdd", "rdd", "none", "logit_kd", "pkd"]
PRESETS: tuple[str, ...] = ("bmgkd", "fdd", "rdd", "none", "logit_kd", "pkd")
KD_TERMS: tuple[str, ...] = ("cka", "local", "cls", "reg", "ld", "co", "logit_kd", "pkd")
# Which distillation terms each preset switches on (spec §6; `ld` applies to GFL only).
PRESET_TERMS: dict[str, tuple[str, ...]] = {
    "bmgkd": ("cka", "local", "cls", "reg", "ld", "co"),
    "fdd": ("cka", "local"),
    "rdd": ("cls", "reg", "ld", "co"),
    "none": (),
    "logit_kd": ("logit_kd",),
    "pkd": ("pkd",),
}


class KDConfig(_Strict):
    """Knowledge distillation from a frozen teacher (spec: shared/docs/bmgkd-method.md).

    ``preset`` picks the terms (see ``PRESET_TERMS``); ``terms`` overrides that set explicitly for
    ablations. Weights and hyper-parameters default to the spec's §6 values, except the feature
    terms: with the spec's λ (CKA 10 + 10, local 6, summed over 4 levels) those terms start
    at 16-51x the detection loss on our runs (a trained R18 teacher with a random R18 student on
    the raccoon train split, and random pairs of each family on synthetic data), and spec §6
    says to scale down a term above ~5x. They are therefore one fifth of the spec's values (CKA
    2 + 2, local 1.2); PKD, the same standardised MSE as the local term without its mean-1
    masks, is scaled alike (6 -> 1.2). Set them back for the literal spec.

    Faster R-CNN's RPN objectness KD follows spec §4.1 (masked BCE summed over every
    non-ignored anchor, divided by the number of *sampled* RPN anchors, 256 per image) and has its
    own λ, ``cls_rpn_weight`` (spec: λ_cls = 1; the RoI-head part keeps ``cls_weight``). Over the
    first 40 steps on the raccoon train split at 192 px (R50 teacher after one epoch, random R18
    student) it was 4.2-5.7x the detection loss in steps 1-4, because the student's RPN starts
    at p = 0.5 on every background anchor, then 0.1-1.3x (mean 0.4x) from step 6 on, inside spec
    §6's target range; a λ of 0.2 would fix those warm-up steps and leave the term at ~0.08x for
    the rest of the run, so the default stays 1. The sum grows with the number of anchors (image
    area): check the logged ``cls_rpn`` diagnostic at larger sizes.

    The teacher is a ``model.pt`` from ``bmgkd train`` or a plain torchvision state dict with
    ``teacher_arch``.
    """

    teacher: str
    teacher_arch: str | None = None
    preset: Preset = "bmgkd"
    terms: tuple[str, ...] | None = None
    levels: int = Field(default=4, ge=1, le=5)
    # A1: patch CKA (§2)
    cka_intra_weight: float = Field(default=2.0, ge=0.0)
    cka_inter_weight: float = Field(default=2.0, ge=0.0)
    cka_patch_size: int = Field(default=16, ge=2)
    cka_center: bool = True
    # A2: cosine-mask local alignment (§3)
    local_weight: float = Field(default=1.2, ge=0.0)
    local_tau: float = Field(default=0.1, gt=0.0)
    # B1: dynamic classification mask (§4.1)
    cls_weight: float = Field(default=1.0, ge=0.0)
    cls_beta: float = Field(default=1.0, ge=0.0)
    cls_rpn_weight: float = Field(default=1.0, ge=0.0)  # Faster R-CNN RPN objectness part
    # B2: high-quality box selection + box KD (+ LD on GFL) (§4.2)
    reg_weight: float = Field(default=2.0, ge=0.0)
    hq_alpha: float = Field(default=0.8, ge=0.0, le=1.0)
    hq_topk: int = Field(default=30, ge=1)
    hq_teacher_better: bool = True
    ld_weight: float = Field(default=0.25, ge=0.0)
    ld_temperature: float = Field(default=10.0, gt=0.0)
    # B3: classification-regression co-optimization (§4.3)
    co_cls_weight: float = Field(default=1.0, ge=0.0)
    co_reg_weight: float = Field(default=2.0, ge=0.0)
    # Baselines
    logit_kd_weight: float = Field(default=1.0, ge=0.0)
    logit_kd_temperature: float = Field(default=1.0, gt=0.0)
    pkd_weight: float = Field(default=1.2, ge=0.0)
    teacher_bf16: bool = True

    @model_validator(mode="after")
    def _check_terms(self) -> KDConfig:
        unknown = [t for t in self.terms or () if t not in KD_TERMS]
        if unknown:
            raise ValueError(
                f"distill.terms: unknown terms {unknown}; choose from {', '.join(KD_TERMS)}"
            )
        if self.teacher_arch is not None and self.teacher_arch not in ARCHITECTURES:
            raise ValueError(f"distill.teacher_arch: unknown architecture {self.teacher_arch!r}")
        return self

    def enabled_terms(self) -> tuple[str, ...]:
        """The terms this config switches on."""
        return self.terms if self.terms is not None else PRESET_TERMS[self.preset]


class DistillConfig(_Strict):
    """The whole run: data, model (the student), optimizer, loop and, optionally, a teacher.

    Plain training is the same run with ``distill=None``. JSON round-trips exactly.
    """

    version: Literal[1] = 1
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    distill: KDConfig | None = None
