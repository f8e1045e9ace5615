"""Generalized Focal Loss terms (Li et al., NeurIPS 2020, arXiv 2006.04388) and integral decoding.

All functions cast their inputs to float32 first, so they are safe to call on bf16/fp16 head
outputs under ``torch.autocast``. Distances are ``(left, top, right, bottom)`` from a point to the
box sides; boxes are xyxy in input-image pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from bmgkd_core.models.atss import GFLTargets

__all__ = [
    "GFL_LOSS_KEYS",
    "boxes_to_distances",
    "compute_aligned_iou",
    "compute_distribution_focal_loss",
    "compute_gfl_losses",
    "compute_quality_focal_loss",
    "decode_boxes",
    "distances_to_boxes",
    "integrate_distribution",
]

# Keys of the train-mode loss dict, in this order (torchvision's names for the first two).
GFL_LOSS_KEYS: tuple[str, str, str] = ("classification", "bbox_regression", "bbox_distribution")


def integrate_distribution(reg_logits: Tensor, reg_max: int) -> Tensor:
    """Expected distance of each side under the softmax distribution over bins ``0..reg_max``.

    Args:
        reg_logits: ``[..., 4 * (reg_max + 1)]`` distribution logits, sides ordered l, t, r, b.
        reg_max: Largest bin index.

    Returns:
        ``[..., 4]`` float32 distances in bin units (multiply by the stride for pixels).
    """
    shape = (*reg_logits.shape[:-1], 4, reg_max + 1)
    probs = reg_logits.float().reshape(shape).softmax(dim=-1)
    bins = torch.arange(reg_max + 1, dtype=torch.float32, device=reg_logits.device)
    # Elementwise product and sum instead of a matmul, which autocast would run in low precision.
    distances: Tensor = (probs * bins).sum(dim=-1)
    return distances


def distances_to_boxes(points: Tensor, distances: Tensor) -> Tensor:
    """Turn ``[..., 2]`` xy points and ``[..., 4]`` ltrb distances into ``[..., 4]`` xyxy boxes."""
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)


def boxes_to_distances(points: Tensor, boxes: Tensor) -> Tensor:
    """Inverse of :func:`distances_to_boxes`: ``[..., 4]`` ltrb distances (may be negative)."""
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)


def decode_boxes(reg_logits: Tensor, points: Tensor, stride: int | Tensor, reg_max: int) -> Tensor:
    """Decode distribution logits into xyxy boxes: ``point ± stride · E[distance]``.

    Args:
        reg_logits: ``[..., P, 4 * (reg_max + 1)]`` logits.
        points: ``[P, 2]`` xy point coordinates in input pixels (broadcast over leading dims).
        stride: The level's stride, or a ``[P, 1]`` tensor of per-point strides.
        reg_max: Largest bin index.

    Returns:
        ``[..., P, 4]`` float32 xyxy boxes in input pixels.
    """
    return distances_to_boxes(points, integrate_distribution(reg_logits, reg_max) * stride)


def compute_quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0) -> Tensor:
    """Elementwise Quality Focal Loss ``-|y - σ|^β ((1 - y) log(1 - σ) + y log σ)``.

    Args:
        logits: ``[..., C]`` class logits (σ = sigmoid(logits)).
        targets: Same shape, soft targets y in ``[0, 1]`` (IoU for the positive class, else 0).
        beta: Focusing exponent (2 in the paper).

    Returns:
        Float32 loss of the same shape, not reduced. The modulating factor is not detached.
    """
    logits = logits.float()
    targets = targets.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return bce * (targets - logits.sigmoid()).abs().pow(beta)


def compute_distribution_focal_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Distribution Focal Loss ``-((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1})``.

    Args:
        logits: ``[M, n_bins]`` logits of one side's distribution (S = softmax).
        targets: ``[M]`` continuous targets y in ``[0, n_bins - 1]``; ``y_i = floor(y)``.

    Returns:
        ``[M]`` float32 loss, not reduced.
    """
    log_probs = logits.float().log_softmax(dim=-1)
    targets = targets.float()
    left = targets.floor().long().clamp(0, logits.shape[-1] - 1)
    right = (left + 1).clamp(max=logits.shape[-1] - 1)
    weight_left = left.float() + 1.0 - targets
    weight_right = targets - left.float()
    log_left = log_probs.gather(-1, left[:, None]).squeeze(-1)
    log_right = log_probs.gather(-1, right[:, None]).squeeze(-1)
    return -(weight_left * log_left + weight_right * log_right)


def compute_aligned_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of ``boxes1[i]`` with ``boxes2[i]`` for ``[M, 4]`` xyxy boxes; ``[M]`` float32."""
    boxes1 = boxes1.float()
    boxes2 = boxes2.float()
    top_left = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(dim=-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(dim=-1)
    return inter / (area1 + area2 - inter).clamp(min=eps)


def compute_gfl_losses(
    cls_logits: Tensor,
    reg_logits: Tensor,
    points: Tensor,
    point_strides: Tensor,
    targets: GFLTargets,
    *,
    reg_max: int,
    beta: float = 2.0,
    dfl_target_eps: float = 0.01,
    loss_weights: tuple[float, float, float] = (1.0, 2.0, 0.25),
) -> dict[str, Tensor]:
    """GFL's three losses for a batch, with mmdet's normalisation.

    Args:
        cls_logits: ``[B, N, C]`` joint class-quality logits, all levels concatenated.
        reg_logits: ``[B, N, 4 * (reg_max + 1)]`` distribution logits.
        points: ``[N, 2]`` point coordinates (input pixels).
        point_strides: ``[N]`` stride of each point's level.
        targets: Assignment from :func:`bmgkd_core.models.atss.assign_gfl_targets`.
        reg_max: Largest bin index.
        beta: QFL exponent.
        dfl_target_eps: DFL targets are clamped to ``[0, reg_max - dfl_target_eps]``.
        loss_weights: Weights of QFL, GIoU and DFL.

    Returns:
        ``{"classification", "bbox_regression", "bbox_distribution"}`` float32 scalars:

        - classification: QFL summed over valid points and classes, divided by ``max(N_pos, 1)``;
          the soft target of a positive is IoU(decoded prediction (detached), GT);
        - bbox_regression: GIoU loss of the positives, each weighted by its predicted quality
          ``w = max_c σ(z_c)`` (detached, background class excluded), divided by ``max(Σw, 1)``;
        - bbox_distribution: DFL averaged over the 4 sides, same weights and divisor.

        With no positives both box losses are exactly 0 (still attached to the graph).
    """
    cls_logits = cls_logits.float()
    reg_logits = reg_logits.float()
    pos = targets.labels > 0  # [B, N]
    num_pos = pos.sum().clamp(min=1).float()
    pos_image, pos_point = pos.nonzero(as_tuple=True)  # [P], [P]
    pos_labels = targets.labels[pos_image, pos_point]  # [P]
    pos_reg = reg_logits[pos_image, pos_point]  # [P, 4 * (reg_max + 1)]
    pos_points = points[pos_point]  # [P, 2]
    pos_strides = point_strides[pos_point].float()[:, None]  # [P, 1]
    pos_gt = targets.boxes[pos_image, pos_point].float()  # [P, 4]
    pos_boxes = decode_boxes(pos_reg, pos_points, pos_strides, reg_max)  # [P, 4]

    quality_targets = torch.zeros_like(cls_logits)
    iou = compute_aligned_iou(pos_boxes.detach(), pos_gt)
    quality_targets[pos_image, pos_point, pos_labels] = iou
    qfl = compute_quality_focal_loss(cls_logits, quality_targets, beta).sum(dim=-1)
    qfl = (qfl * targets.valid).sum() / num_pos

    weights = cls_logits.detach()[pos_image, pos_point, 1:].sigmoid().amax(dim=-1)  # [P]
    weight_sum = weights.sum().clamp(min=1)
    giou = generalized_box_iou_loss(pos_boxes, pos_gt, reduction="none")
    giou = (giou * weights).sum() / weight_sum
    dfl_targets = boxes_to_distances(pos_points, pos_gt) / pos_strides
    dfl_targets = dfl_targets.clamp(min=0, max=reg_max - dfl_target_eps)  # [P, 4]
    dfl = compute_distribution_focal_loss(pos_reg.reshape(-1, reg_max + 1), dfl_targets.flatten())
    dfl = (dfl.view(-1, 4).mean(dim=-1) * weights).sum() / weight_sum
    values = (qfl, giou, dfl)
    return {key: w * v for key, w, v in zip(GFL_LOSS_KEYS, loss_weights, values, strict=True)}
