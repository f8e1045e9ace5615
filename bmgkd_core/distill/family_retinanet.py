"""RetinaNet under the Distiller: torchvision's ``RetinaNet.forward`` re-composed from its parts.

Student: ``head(features)`` → ``cls_logits [B, HWA, K]`` and ``bbox_regression [B, HWA, 4]``;
anchors from ``anchor_generator``; the matched GT per anchor with ``proposal_matcher`` on
``box_iou(gt, anchors)`` exactly as ``RetinaNet.compute_loss`` does, then the task loss with
``head.compute_loss(targets, head_outputs, anchors, matched_idxs)`` (what ``compute_loss`` calls
after matching, so the matching runs once). Teacher: its ``head`` on its own FPN features of the
same batch; both regressions are decoded with the student's ``box_coder`` on the same anchors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from bmgkd_core.distill._context import StepContext
from bmgkd_core.distill.dense import DenseOutputs, compute_dense_kd
from bmgkd_core.errors import ConfigError

__all__ = ["compute_retinanet_losses", "match_anchors"]


def match_anchors(
    model: RetinaNet, anchors: Sequence[Tensor], targets: Sequence[Mapping[str, Any]]
) -> list[Tensor]:
    """Per image ``[HWA]`` matched GT index; -1 background, -2 between thresholds (ignored)."""
    matched = []
    for anchors_per_image, target in zip(anchors, targets, strict=True):
        if target["boxes"].numel() == 0:
            matched.append(
                torch.full(
                    (anchors_per_image.size(0),), -1, dtype=torch.int64, device=anchors[0].device
                )
            )
            continue
        matched.append(model.proposal_matcher(box_iou(target["boxes"], anchors_per_image)))
    return matched


def compute_retinanet_losses(
    student: RetinaNet,
    teacher: RetinaNet | None,
    ctx: StepContext,
    image_list: ImageList,
    student_feats: list[Tensor],
    teacher_feats: list[Tensor] | None,
    targets: Sequence[Mapping[str, Any]],
) -> dict[str, Tensor]:
    """Task losses (``task.classification``, ``task.bbox_regression``) and the response KD.

    Args:
        student: The student detector.
        teacher: The frozen teacher (``None`` when no response term is enabled).
        ctx: Step context.
        image_list: The student-transformed batch (``ImageList``).
        student_feats: Student FPN maps, fine to coarse.
        teacher_feats: Teacher FPN maps of the same batch (``None`` without a teacher pass).
        targets: Transformed targets.

    Returns:
        The ``task.*`` and enabled ``distill.*`` terms.
    """
    head_outputs = student.head(student_feats)
    anchors = student.anchor_generator(image_list, student_feats)
    matched = match_anchors(student, anchors, targets)
    task = student.head.compute_loss(list(targets), head_outputs, anchors, matched)
    out = {f"task.{k}": v for k, v in task.items()}
    if teacher is None or teacher_feats is None or not ctx.response_terms:
        return out
    with ctx.teacher_mode(image_list.tensors.device):
        teacher_outputs = teacher.head(teacher_feats)
    _check_same_shape(head_outputs, teacher_outputs)
    if not ctx.compute_terms:
        return out
    all_anchors = torch.stack(anchors)  # [B, HWA, 4]
    b, n = all_anchors.shape[:2]
    flat_anchors = all_anchors.reshape(b * n, 4).float()
    coder = student.box_coder

    def decode(deltas: Tensor) -> Tensor:
        boxes: Tensor = coder.decode_single(deltas.reshape(b * n, 4).float(), flat_anchors)
        return boxes.view(b, n, 4)

    matched_all = torch.stack(matched)  # [B, HWA]
    with ctx.section("prep"):
        dense = DenseOutputs(
            student_logits=head_outputs["cls_logits"][..., 1:],
            teacher_logits=teacher_outputs["cls_logits"][..., 1:].float(),
            student_boxes=decode(head_outputs["bbox_regression"]),
            teacher_boxes=decode(teacher_outputs["bbox_regression"]),
            anchor_centers=(all_anchors[..., :2] + all_anchors[..., 2:]) / 2,
            valid=matched_all != student.proposal_matcher.BETWEEN_THRESHOLDS,
            num_pos=(matched_all >= 0).sum(),
        )
    out.update(compute_dense_kd(ctx, dense, targets))
    return out


def _check_same_shape(student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
    for key in ("cls_logits", "bbox_regression"):
        if student[key].shape != teacher[key].shape:
            raise ConfigError(
                f"teacher and student RetinaNet heads disagree on {key}: "
                f"{tuple(teacher[key].shape)} vs {tuple(student[key].shape)} (anchors, strides "
                "and classes must match for response KD)"
            )
