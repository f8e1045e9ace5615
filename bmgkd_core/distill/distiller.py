"""The BMGKD ``Distiller``: a frozen teacher beside a student, composed without subclassing.

The student's own parts are called explicitly, as ``GeneralizedRCNN.forward`` does:
``student.transform`` → ``student.backbone`` → the family's head code. The teacher's backbone and
head run on the **same** transformed batch tensor under ``torch.no_grad()`` (and bf16 autocast on
CUDA when ``kd.teacher_bf16``). Feature terms (spec §2–§3, and the PKD baseline) use the first
``kd.levels`` FPN outputs through the adapters ``φ_l``; response terms (spec §4) are the family
modules' job.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.image_list import ImageList

from bmgkd_core.config import KDConfig
from bmgkd_core.distill._context import FEATURE_TERMS, ResponseLosses, StepContext
from bmgkd_core.distill.adapters import LevelPair, build_adapters, probe_levels
from bmgkd_core.distill.cka import PatchCKALoss
from bmgkd_core.distill.family_fasterrcnn import compute_fasterrcnn_losses
from bmgkd_core.distill.family_gfl import compute_gfl_losses_kd
from bmgkd_core.distill.family_retinanet import compute_retinanet_losses
from bmgkd_core.distill.feature import CosineMaskFeatureLoss, PKDLoss
from bmgkd_core.errors import ConfigError
from bmgkd_core.models.gfl import GFL

__all__ = ["FAMILY_TYPES", "Distiller", "Family"]

Family = Literal["retinanet", "gfl", "fasterrcnn"]
FAMILY_TYPES: dict[str, type[nn.Module]] = {
    "retinanet": RetinaNet,
    "gfl": GFL,
    "fasterrcnn": FasterRCNN,
}
_FamilyFn = Callable[..., dict[str, Tensor]]
_FAMILY_FNS: dict[str, _FamilyFn] = {
    "retinanet": compute_retinanet_losses,
    "gfl": compute_gfl_losses_kd,
    "fasterrcnn": compute_fasterrcnn_losses,
}


class Distiller(nn.Module):
    """Student + frozen teacher + adapters + BMGKD loss terms, with the detector contract.

    Train mode: ``distiller(images, targets)`` returns ``{"task.<torchvision key>": ...,
    "distill.<term>": ...}`` with the loss weights applied, so the total is
    ``sum(loss_dict.values())``. Response terms give ``distill.cls``, ``distill.reg``,
    ``distill.ld`` (GFL), ``distill.co_cls`` + ``distill.co_reg`` (``co``) and
    ``distill.logit_kd``; feature terms ``distill.cka``, ``distill.local`` and ``distill.pkd``.
    Only ``kd.enabled_terms()`` run; with none (preset ``none``) the teacher never runs and the
    losses equal the plain student's. Eval mode: ``distiller(images)`` is ``student(images)``.

    The teacher is a plain attribute, frozen with ``requires_grad_(False)``, kept in eval mode by
    :meth:`train` and run under ``torch.no_grad()``. It is not part of
    :meth:`student_state_dict`; the trainable parameters are the student's and the adapters'.

    ``compute_terms`` (default ``True``) is a timing switch, not a training mode: set to ``False``,
    a step still runs the teacher forward its terms need (backbone, and heads for response
    terms) but computes no term, no adapter and no diagnostic, and returns the ``task.*``
    losses only. ``bench/distill_overhead.py`` times the terms' share of a step as the
    difference. Each term's forward runs in a ``bmgkd.<term>`` profiler range (the teacher's in
    ``bmgkd.teacher``; ``prep``/``select``/``diag`` for the shared inputs, the high-quality box
    selection and the diagnostics).

    Args:
        student: A bmgkd/torchvision detector (``RetinaNet``, ``GFL`` or ``FasterRCNN``).
        teacher: A detector of the same family (backbones may differ).
        family: ``"retinanet"``, ``"gfl"`` or ``"fasterrcnn"``.
        kd: Terms, weights and hyper-parameters.
        probe_size: Side of the zero image used once to read both FPNs' shapes and size the
            adapters; defaults to the student transform's ``max_size``.

    Raises:
        ConfigError: unknown family, a student or teacher of another family, or mismatched
            image normalisation.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        family: Family | str,
        kd: KDConfig,
        probe_size: int | None = None,
    ) -> None:
        super().__init__()
        _check_family(family, student, teacher)
        self.family = str(family)
        self.kd = kd
        self.student = student
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        terms = set(kd.enabled_terms())
        if family != "gfl":
            terms.discard("ld")
        self.terms = frozenset(terms)
        self.compute_terms = True
        self.response_losses = ResponseLosses(kd)
        self._diag: dict[str, Tensor] = {}
        self.level_pairs: list[LevelPair] = []
        if self.terms & FEATURE_TERMS:
            transform: Any = student.get_submodule("transform")
            size = probe_size or max(int(transform.max_size), 32)
            self.level_pairs = probe_levels(
                student.get_submodule("backbone"),
                teacher.get_submodule("backbone"),
                image_size=size,
                levels=kd.levels,
            )
        self.adapters = build_adapters(self.level_pairs)
        self.cka_losses = nn.ModuleList(
            PatchCKALoss(kd.cka_intra_weight, kd.cka_inter_weight, kd.cka_patch_size, kd.cka_center)
            for _ in self.level_pairs
        )
        self.local_losses = nn.ModuleList(
            CosineMaskFeatureLoss(kd.local_tau) for _ in self.level_pairs
        )
        self.pkd_loss = PKDLoss()

    def train(self, mode: bool = True) -> Distiller:
        """Set the student (and adapters) to ``mode``; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def student_state_dict(self) -> dict[str, Tensor]:
        """The student's own ``state_dict`` (no teacher, no adapter keys)."""
        return dict(self.student.state_dict())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student and adapter parameters with ``requires_grad`` (what the optimizer gets)."""
        params = [*self.student.parameters(), *self.adapters.parameters()]
        return [p for p in params if p.requires_grad]

    def describe(self) -> dict[str, Any]:
        """JSON-ready set-up report: family, terms, distilled levels and inserted adapters."""
        levels = [pair.to_dict() for pair in self.level_pairs]
        return {
            "family": self.family,
            "preset": self.kd.preset,
            "terms": sorted(self.terms),
            "levels": levels,
            "adapters": [lv for lv in levels if lv["adapter"] != "identity"],
            "adapter_params": sum(p.numel() for p in self.adapters.parameters()),
            "student_params": sum(p.numel() for p in self.student.parameters()),
            "teacher_params": sum(p.numel() for p in self.teacher.parameters()),
        }

    def last_diagnostics(self) -> dict[str, float]:
        """Spec §6 diagnostics of the last training step, as floats (one host sync).

        Keys: ``cka_intra.<l>``/``cka_inter.<l>`` per level, ``mask_entropy_sp.<l>``/
        ``mask_entropy_ch.<l>`` per level, ``hq_per_image`` (``|H|`` per image), ``max_dp_mean``
        (mean ``max_c |Δp|`` over valid anchors or RoIs) and, for Faster R-CNN, the unweighted
        ``cls_rpn``/``cls_roi`` parts; a key is absent when its term did not run.
        """
        if not self._diag:
            return {}
        values = torch.stack([v.detach().float().reshape(()) for v in self._diag.values()])
        return dict(zip(self._diag, values.tolist(), strict=True))

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Any]] | None = None
    ) -> Any:
        """Loss dict in train mode, the student's detections in eval mode (class docstring).

        Raises:
            ValueError: train mode without targets, or a target count that differs.
        """
        if not self.training:
            return self.student(images, targets)
        if targets is None or len(targets) != len(images):
            raise ValueError(
                "Distiller: training needs one target per image, got "
                f"{'none' if targets is None else len(targets)} for {len(images)} images"
            )
        student: Any = self.student
        image_list, targets_t = student.transform(list(images), [dict(t) for t in targets])
        student_feats = student.backbone(image_list.tensors)
        teacher_feats = None
        if self.terms:
            teacher_backbone = self.teacher.get_submodule("backbone")
            with self._context().teacher_mode(image_list.tensors.device):
                teacher_feats = teacher_backbone(image_list.tensors)
        return self._losses(image_list, targets_t, student_feats, teacher_feats)

    def _context(self) -> StepContext:
        return StepContext(
            self.kd, self.terms, self.response_losses, self.kd.teacher_bf16, self.compute_terms
        )

    def _losses(
        self,
        image_list: ImageList,
        targets: list[dict[str, Tensor]],
        student_feats: OrderedDict[str, Tensor],
        teacher_feats: OrderedDict[str, Tensor] | None,
    ) -> dict[str, Tensor]:
        ctx = self._context()
        family_fn = _FAMILY_FNS[self.family]
        if self.family == "fasterrcnn":
            s_feats: Any = student_feats
            t_feats: Any = teacher_feats
        else:
            s_feats = list(student_feats.values())
            t_feats = None if teacher_feats is None else list(teacher_feats.values())
        teacher = self.teacher if self.terms else None
        out = family_fn(self.student, teacher, ctx, image_list, s_feats, t_feats, targets)
        if teacher_feats is not None and self.terms & FEATURE_TERMS and self.compute_terms:
            out.update(self._feature_terms(ctx, student_feats, teacher_feats))
        self._diag = ctx.diag
        return out

    def _feature_terms(
        self,
        ctx: StepContext,
        student_feats: OrderedDict[str, Tensor],
        teacher_feats: OrderedDict[str, Tensor],
    ) -> dict[str, Tensor]:
        """``cka``, ``local`` and ``pkd`` summed over the distilled levels, weights applied."""
        kd, zero = self.kd, next(iter(student_feats.values())).new_zeros((), dtype=torch.float32)
        sums = {"cka": zero, "local": zero, "pkd": zero}
        pairs = zip(student_feats.values(), teacher_feats.values(), strict=True)
        for level, (s_map, t_map) in enumerate(pairs):
            if level >= len(self.level_pairs):
                break
            with ctx.section("adapters"):
                adapted = self.adapters[level](s_map, t_map.shape[-2:])
                t_map = t_map.float()
            if "cka" in self.terms:
                cka = cast(PatchCKALoss, self.cka_losses[level])
                with ctx.section("cka"):
                    sums["cka"] = sums["cka"] + cka(adapted, t_map)
                stats = {k: v for k, v in cka.last_stats.items() if k != "num_patches"}
                ctx.diag.update({f"{k}.{level}": v for k, v in stats.items()})
            if "local" in self.terms:
                local = cast(CosineMaskFeatureLoss, self.local_losses[level])
                with ctx.section("local"):
                    sums["local"] = sums["local"] + local(adapted, t_map)
                ctx.diag.update({f"{k}.{level}": v for k, v in local.last_stats.items()})
            if "pkd" in self.terms:
                with ctx.section("pkd"):
                    sums["pkd"] = sums["pkd"] + self.pkd_loss(adapted, t_map)
        weights = {"cka": 1.0, "local": kd.local_weight, "pkd": kd.pkd_weight}
        return {f"distill.{k}": weights[k] * v for k, v in sums.items() if k in self.terms}


def _check_family(family: str, student: nn.Module, teacher: nn.Module) -> None:
    if family not in FAMILY_TYPES:
        raise ConfigError(f"unknown detector family {family!r}; choose one of {list(FAMILY_TYPES)}")
    expected = FAMILY_TYPES[family]
    for role, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, expected):
            raise ConfigError(
                f"the {role} is a {type(model).__name__}, expected a {expected.__name__} for "
                f"family {family!r}: teacher and student must be the same detector family"
            )
    s_tf: Any = student.get_submodule("transform")
    t_tf: Any = teacher.get_submodule("transform")
    if list(s_tf.image_mean) != list(t_tf.image_mean) or list(s_tf.image_std) != list(
        t_tf.image_std
    ):
        raise ConfigError(
            "teacher and student normalise images differently "
            f"(mean {t_tf.image_mean} vs {s_tf.image_mean}, std {t_tf.image_std} vs "
            f"{s_tf.image_std}); the teacher runs on the student's transformed batch"
        )
