from __future__ import annotations

import pytest
import torch

from bmgkd_core.config import OptimConfig
from bmgkd_core.train.optim import build_optimizer, build_scheduler, lr_factor


def test_lr_factor_warmup_then_step_decay_at_milestones() -> None:
    cfg = OptimConfig(warmup_steps=10, warmup_ratio=0.1, scheduler="step", milestones=(0.5, 0.75))
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(5, 100, cfg) == pytest.approx(0.55)
    assert lr_factor(10, 100, cfg) == 1.0
    assert lr_factor(49, 100, cfg) == 1.0
    assert lr_factor(50, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(75, 100, cfg) == pytest.approx(0.01)


def test_lr_factor_cosine_ends_near_zero_and_warmup_capped_for_short_runs() -> None:
    cfg = OptimConfig(warmup_steps=500, scheduler="cosine")
    assert lr_factor(3, 9, cfg) == 1.0  # warm-up capped at a third of a 9-step run
    assert lr_factor(9, 9, cfg) == pytest.approx(0.0, abs=1e-9)


def test_scheduler_steps_follow_lr_factor() -> None:
    cfg = OptimConfig(lr=0.1, warmup_steps=2, warmup_ratio=0.5, scheduler="constant")
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(params, cfg)
    sched = build_scheduler(opt, cfg, total_steps=10)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05, 0.075, 0.1, 0.1])
