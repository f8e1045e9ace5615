"""Internal: what the per-family KD code needs from the Distiller for one training step."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.autograd.profiler import record_function

from bmgkd_core.config import KDConfig
from bmgkd_core.distill.cooptimization import CoOptimizationLoss
from bmgkd_core.distill.response import (
    BoxKDLoss,
    DistributionKDLoss,
    DynamicClsKDLoss,
    LogitKDLoss,
    RoIClsKDLoss,
)

RESPONSE_TERMS = frozenset({"cls", "reg", "ld", "co", "logit_kd"})
FEATURE_TERMS = frozenset({"cka", "local", "pkd"})


class ResponseLosses(nn.Module):
    """The response-KD loss modules built from a :class:`KDConfig` (no parameters).

    ``co`` is the sigmoid (dense-head) form; ``co_roi`` the softmax form with background 0 used
    on the Faster R-CNN RoI head. ``logit_kd_roi`` is the softmax form of the baseline.
    """

    def __init__(self, kd: KDConfig) -> None:
        super().__init__()
        self.cls = DynamicClsKDLoss(beta=kd.cls_beta)
        self.cls_roi = RoIClsKDLoss(temperature=1.0)
        self.box = BoxKDLoss()
        self.ld = DistributionKDLoss(temperature=kd.ld_temperature)
        self.co = CoOptimizationLoss(kd.co_cls_weight, kd.co_reg_weight, activation="sigmoid")
        self.co_roi = CoOptimizationLoss(
            kd.co_cls_weight, kd.co_reg_weight, activation="softmax", background_class=0
        )
        self.logit_kd = LogitKDLoss(kd.logit_kd_temperature, activation="sigmoid")
        self.logit_kd_roi = LogitKDLoss(kd.logit_kd_temperature, activation="softmax")


@dataclass
class StepContext:
    """Config, enabled terms, loss modules and the diagnostics sink of one step.

    Attributes:
        kd: The distillation config (weights and hyper-parameters).
        terms: The enabled terms (``kd.enabled_terms()`` restricted to the family).
        losses: The response-KD loss modules.
        teacher_bf16: Run the teacher under bf16 autocast on CUDA. On the CPU only when the
            step already runs under CPU autocast (``train.cpu_amp``); fp32 otherwise.
        compute_terms: ``False`` stops after the teacher forward the terms need, before any
            term (see ``Distiller.compute_terms``).
        diag: Detached 0-dim tensors collected during the step (no host sync).
    """

    kd: KDConfig
    terms: frozenset[str]
    losses: ResponseLosses
    teacher_bf16: bool
    compute_terms: bool = True
    diag: dict[str, Tensor] = field(default_factory=dict)

    @property
    def response_terms(self) -> frozenset[str]:
        """The enabled terms that need the teacher's head."""
        return self.terms & RESPONSE_TERMS

    @contextlib.contextmanager
    def teacher_mode(self, device: torch.device) -> Iterator[None]:
        """``no_grad``, bf16 autocast as ``teacher_bf16`` says, a ``bmgkd.teacher`` range."""
        if device.type == "cpu":
            use_bf16 = self.teacher_bf16 and torch.is_autocast_enabled("cpu")
        else:
            use_bf16 = self.teacher_bf16 and device.type == "cuda"
        with (
            self.section("teacher"),
            torch.no_grad(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16),
        ):
            yield

    @staticmethod
    def section(name: str) -> contextlib.AbstractContextManager[object]:
        """A ``bmgkd.<name>`` profiler range around a term's forward while a profiler runs.

        Without one it is a ``nullcontext``: a ``record_function`` costs ~10 µs of host time
        even when nothing records it.
        ``bench/distill_overhead.py`` reports the time spent in each range.
        """
        if not torch._C._autograd._profiler_enabled():
            return contextlib.nullcontext()
        return record_function(f"bmgkd.{name}")
