"""BMGKD distillation: the loss terms (spec §2–§4) and the :class:`Distiller` that feeds them.

Feature terms take ``[B, C, H, W]`` student and teacher maps of one FPN level; response terms
take flattened ``[A, K]`` logits and ``[A, 4]`` xyxy absolute-pixel boxes. Every loss detaches
the teacher, computes in float32 and returns a 0-dim tensor. The :class:`Distiller` builds them
from a :class:`~bmgkd_core.config.KDConfig` and feeds them each detector family's tensors;
:func:`load_teacher` loads the frozen teacher strictly. The preflight lives in
:mod:`bmgkd_core.distill.preflight` (it builds whole runs, so it is not imported here).
"""

from bmgkd_core.distill.adapters import FeatureAdapter, LevelPair, build_adapters, probe_levels
from bmgkd_core.distill.cka import PatchCKALoss, linear_cka
from bmgkd_core.distill.cooptimization import CoOptimizationLoss
from bmgkd_core.distill.distiller import Distiller
from bmgkd_core.distill.feature import CosineMaskFeatureLoss, PKDLoss, standardize_per_channel
from bmgkd_core.distill.response import (
    BoxKDLoss,
    DistributionKDLoss,
    DynamicClsKDLoss,
    LogitKDLoss,
    RoIClsKDLoss,
    compute_giou_loss,
    compute_softmax_kl,
)
from bmgkd_core.distill.selection import (
    Selection,
    concat_selections,
    paired_box_iou,
    select_high_quality_boxes,
    select_high_quality_rois,
)
from bmgkd_core.distill.teacher import TeacherReport, check_teacher, load_teacher

__all__ = [
    "BoxKDLoss",
    "CoOptimizationLoss",
    "CosineMaskFeatureLoss",
    "Distiller",
    "DistributionKDLoss",
    "DynamicClsKDLoss",
    "FeatureAdapter",
    "LevelPair",
    "LogitKDLoss",
    "PKDLoss",
    "PatchCKALoss",
    "RoIClsKDLoss",
    "Selection",
    "TeacherReport",
    "build_adapters",
    "check_teacher",
    "compute_giou_loss",
    "compute_softmax_kl",
    "concat_selections",
    "linear_cka",
    "load_teacher",
    "paired_box_iou",
    "probe_levels",
    "select_high_quality_boxes",
    "select_high_quality_rois",
    "standardize_per_channel",
]
