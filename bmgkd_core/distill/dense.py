"""Response KD shared by the dense one-stage heads (RetinaNet, GFL): spec §4 on flattened anchors.

The family modules turn their head outputs into :class:`DenseOutputs`; :func:`compute_dense_kd`
computes ``cls`` (§4.1), ``reg`` and ``ld`` (§4.2), ``co`` (§4.3) and the ``logit_kd`` baseline
from them. Class columns are the foreground classes only (the detectors' label-0 logit is never
positive, spec §1 counts K = 80 columns), so a GT label ``c`` is column ``c - 1`` here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bmgkd_core.distill._context import StepContext
from bmgkd_core.distill.selection import (
    Selection,
    concat_selections,
    select_high_quality_boxes,
)

__all__ = ["DenseOutputs", "compute_dense_kd"]


@dataclass(frozen=True)
class DenseOutputs:
    """Student and teacher predictions on the same ``N`` anchors (points) of ``B`` images.

    Attributes:
        student_logits: ``[B, N, K]`` foreground class logits (gradients flow).
        teacher_logits: ``[B, N, K]`` teacher logits (detached).
        student_boxes: ``[B, N, 4]`` xyxy boxes decoded from the student's regression.
        teacher_boxes: ``[B, N, 4]`` xyxy boxes decoded from the teacher's, same anchors.
        anchor_centers: ``[B, N, 2]`` xy anchor (point) centres.
        valid: ``[B, N]`` bool, the anchors that carry classification loss (``V``).
        num_pos: Positives of the student's assigner over the batch (0-dim tensor).
        student_dists: ``[B, N, 4, n_bins]`` GFL distribution logits, ``None`` otherwise.
        teacher_dists: Same for the teacher.
    """

    student_logits: Tensor
    teacher_logits: Tensor
    student_boxes: Tensor
    teacher_boxes: Tensor
    anchor_centers: Tensor
    valid: Tensor
    num_pos: Tensor
    student_dists: Tensor | None = None
    teacher_dists: Tensor | None = None


def compute_dense_kd(
    ctx: StepContext, outputs: DenseOutputs, targets: Sequence[Mapping[str, Any]]
) -> dict[str, Tensor]:
    """The enabled response-KD terms, weighted, as ``distill.*`` entries.

    Args:
        ctx: Config, enabled terms, loss modules and the diagnostics sink.
        outputs: Paired predictions.
        targets: Transformed targets (``boxes`` in input pixels, ``labels`` in ``1..K``).

    Returns:
        ``distill.cls``, ``distill.reg``, ``distill.ld``, ``distill.co_cls``,
        ``distill.co_reg`` and ``distill.logit_kd``, those that are enabled.
    """
    kd, terms, losses = ctx.kd, ctx.terms, ctx.losses
    b, n, k = outputs.student_logits.shape
    z_s = outputs.student_logits.reshape(b * n, k)
    z_t = outputs.teacher_logits.reshape(b * n, k).float()
    valid = outputs.valid.reshape(b * n)
    num_pos = outputs.num_pos.float().clamp(min=1.0)
    out: dict[str, Tensor] = {}
    if "cls" in terms:
        with ctx.section("cls"):
            cls = losses.cls(z_s, z_t, valid=valid, num_pos=num_pos)
            out["distill.cls"] = kd.cls_weight * cls
    if "logit_kd" in terms:
        with ctx.section("logit_kd"):
            logit_kd = losses.logit_kd(z_s, z_t, valid=valid)
            out["distill.logit_kd"] = kd.logit_kd_weight * logit_kd
    with ctx.section("diag"):
        _record_gap(ctx, z_s, z_t, valid)
    if not terms & {"reg", "ld", "co"}:
        return out
    with ctx.section("select"):  # spec §4.2, shared by reg, ld and co
        b_s = outputs.student_boxes.reshape(b * n, 4).float()
        b_t = outputs.teacher_boxes.reshape(b * n, 4).float()
        selection = _select(ctx, outputs, targets)
        ctx.diag["hq_per_image"] = torch.tensor(len(selection) / max(b, 1), device=z_s.device)
    idx = selection.anchor_idx
    if "reg" in terms:
        with ctx.section("reg"):
            box = losses.box(b_s[idx], b_t[idx], weights=selection.weights, num_pos=num_pos)
            out["distill.reg"] = kd.reg_weight * box
    if "ld" in terms and outputs.student_dists is not None and outputs.teacher_dists is not None:
        with ctx.section("ld"):
            d_s = outputs.student_dists.reshape(b * n, 4, -1)[idx]
            d_t = outputs.teacher_dists.reshape(b * n, 4, -1)[idx]
            ld = losses.ld(d_s, d_t, weights=selection.weights, num_pos=num_pos)
            out["distill.ld"] = kd.ld_weight * ld
    if "co" in terms:
        with ctx.section("co"):
            co_cls, co_reg = losses.co.compute_terms(
                z_s, z_t, b_s, b_t, selection, valid=valid, num_pos=num_pos
            )
        out["distill.co_cls"], out["distill.co_reg"] = co_cls, co_reg
    return out


@torch.no_grad()
def _record_gap(ctx: StepContext, z_s: Tensor, z_t: Tensor, valid: Tensor) -> None:
    """Diagnostic: mean over valid anchors of ``max_c |σ(z_t) − σ(z_s)|``."""
    if z_s.shape[1] == 0:
        return
    gap = (torch.sigmoid(z_t) - torch.sigmoid(z_s.float())).abs().amax(dim=1)
    weights = valid.float()
    ctx.diag["max_dp_mean"] = (gap * weights).sum() / weights.sum().clamp(min=1.0)


@torch.no_grad()
def _select(
    ctx: StepContext, outputs: DenseOutputs, targets: Sequence[Mapping[str, Any]]
) -> Selection:
    """High-quality teacher boxes (spec §4.2) per image, joined over the batch."""
    kd = ctx.kd
    n = outputs.student_logits.shape[1]
    selections, gts = [], []
    for i, target in enumerate(targets):
        gt_boxes, gt_labels = target["boxes"], target["labels"]
        selections.append(
            select_high_quality_boxes(
                torch.sigmoid(outputs.teacher_logits[i].float()),
                outputs.teacher_boxes[i].float(),
                outputs.student_boxes[i].float(),
                outputs.anchor_centers[i],
                gt_boxes,
                gt_labels - 1,
                alpha=kd.hq_alpha,
                topk=kd.hq_topk,
                require_teacher_better=kd.hq_teacher_better,
            )
        )
        gts.append(int(gt_boxes.shape[0]))
    return concat_selections(selections, [n] * len(selections), gts)
