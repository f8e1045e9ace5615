"""GFL under the Distiller: ``forward_head`` → ``assign_targets`` → ``compute_loss`` + response KD.

The ATSS assignment is computed once and shared by the task loss (``assignment=``) and the KD
terms (``V`` = ``GFLTargets.valid``, ``N_pos`` = ``GFLTargets.num_pos``). Boxes are the integral
decodes of both heads on the same points; the distributions, reshaped to ``[B, N, 4, reg_max+1]``,
feed the ``ld`` term (GFL only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList

from bmgkd_core.distill._context import StepContext
from bmgkd_core.distill.dense import DenseOutputs, compute_dense_kd
from bmgkd_core.errors import ConfigError
from bmgkd_core.models.gfl import GFL
from bmgkd_core.models.gfl_head import GFLHeadOutputs

__all__ = ["compute_gfl_losses_kd"]


def compute_gfl_losses_kd(
    student: GFL,
    teacher: GFL | None,
    ctx: StepContext,
    image_list: ImageList,
    student_feats: list[Tensor],
    teacher_feats: list[Tensor] | None,
    targets: Sequence[Mapping[str, Any]],
) -> dict[str, Tensor]:
    """Task losses (``task.classification``, ``task.bbox_regression``,
    ``task.bbox_distribution``) and the enabled response-KD terms.

    Args: as :func:`bmgkd_core.distill.family_retinanet.compute_retinanet_losses`.

    Returns:
        The ``task.*`` and enabled ``distill.*`` terms.
    """  # noqa: D205
    outputs = student.forward_head(student_feats)
    sizes = image_list.image_sizes
    assignment = student.assign_targets(targets, outputs, sizes)
    task = student.compute_loss(targets, outputs, sizes, assignment=assignment)
    out = {f"task.{k}": v for k, v in task.items()}
    if teacher is None or teacher_feats is None or not ctx.response_terms:
        return out
    with ctx.teacher_mode(image_list.tensors.device):
        teacher_outputs = teacher.forward_head(teacher_feats)
    _check_same_layout(outputs, teacher_outputs)
    if not ctx.compute_terms:
        return out
    with ctx.section("prep"):
        cls_s, reg_s, points, _ = outputs.concat_levels()
        cls_t, reg_t, _, _ = teacher_outputs.concat_levels()
        b, n = cls_s.shape[:2]
        dense = DenseOutputs(
            student_logits=cls_s[..., 1:],
            teacher_logits=cls_t[..., 1:].float(),
            student_boxes=torch.cat(student.decode_boxes(outputs), dim=1),
            teacher_boxes=torch.cat(teacher.decode_boxes(teacher_outputs), dim=1),
            anchor_centers=points.expand(b, n, 2),
            valid=assignment.valid,
            num_pos=assignment.num_pos,
            student_dists=reg_s.reshape(b, n, 4, outputs.reg_max + 1),
            teacher_dists=reg_t.float().reshape(b, n, 4, teacher_outputs.reg_max + 1),
        )
    out.update(compute_dense_kd(ctx, dense, targets))
    return out


def _check_same_layout(student: GFLHeadOutputs, teacher: GFLHeadOutputs) -> None:
    same = (
        student.sizes_per_level == teacher.sizes_per_level
        and student.strides == teacher.strides
        and student.cls_logits_per_level[0].shape[-1] == teacher.cls_logits_per_level[0].shape[-1]
        and student.reg_max == teacher.reg_max
    )
    if not same:
        raise ConfigError(
            "teacher and student GFL heads disagree (levels "
            f"{teacher.sizes_per_level} vs {student.sizes_per_level}, strides {teacher.strides} "
            f"vs {student.strides}, reg_max {teacher.reg_max} vs {student.reg_max}); points, "
            "classes and bins must match for response KD"
        )
