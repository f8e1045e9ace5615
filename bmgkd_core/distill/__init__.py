"""BMGKD distillation terms as pure-tensor loss modules (spec §2–§4).

Feature terms take ``[B, C, H, W]`` student and teacher maps of one FPN level; response terms
take flattened ``[A, K]`` logits and ``[A, 4]`` xyxy absolute-pixel boxes. Every loss detaches
the teacher, computes in float32 and returns a 0-dim tensor. Building them from the config and
feeding them each detector's tensors is the Distiller's job.
"""

from bmgkd_core.distill.cka import PatchCKALoss, linear_cka
from bmgkd_core.distill.cooptimization import CoOptimizationLoss
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

__all__ = [
    "BoxKDLoss",
    "CoOptimizationLoss",
    "CosineMaskFeatureLoss",
    "DistributionKDLoss",
    "DynamicClsKDLoss",
    "LogitKDLoss",
    "PKDLoss",
    "PatchCKALoss",
    "RoIClsKDLoss",
    "Selection",
    "compute_giou_loss",
    "compute_softmax_kl",
    "concat_selections",
    "linear_cka",
    "paired_box_iou",
    "select_high_quality_boxes",
    "select_high_quality_rois",
    "standardize_per_channel",
]
