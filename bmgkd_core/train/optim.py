"""Optimizer and learning-rate schedule built from :class:`~bmgkd_core.config.OptimConfig`."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from bmgkd_core.config import OptimConfig
from bmgkd_core.errors import ConfigError

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov off, as mmdet) or AdamW over the parameters that require grad.

    Raises:
        ConfigError: no trainable parameter.
    """
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ConfigError("no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the base LR at ``step`` (0-based) of ``total_steps``.

    Linear warm-up from ``warmup_ratio`` to 1 over ``warmup_steps`` (capped at a third of the
    run, so very short runs still reach the base LR), then ``step`` decay at the milestone
    fractions, ``cosine`` decay to 0, or ``constant``.
    """
    total = max(total_steps, 1)
    warmup = min(cfg.warmup_steps, total // 3)
    if step < warmup:
        alpha = step / warmup
        return cfg.warmup_ratio + (1.0 - cfg.warmup_ratio) * alpha
    if cfg.scheduler == "constant":
        return 1.0
    if cfg.scheduler == "cosine":
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    passed = sum(1 for m in cfg.milestones if step >= round(m * total))
    return float(cfg.gamma**passed)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor`."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
