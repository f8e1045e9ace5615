"""ATSS label assignment (Zhang et al., CVPR 2020, arXiv 1912.02424) for one point per location.

Each point carries a square anchor of side ``anchor_scale · stride`` centred on it (mmdet's GFL:
``octave_base_scale=8``, one scale, one ratio); the anchor is used only for the IoU statistics.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["GFLTargets", "assign_atss", "assign_gfl_targets", "points_to_anchors"]

# A candidate's centre must be at least this far inside its GT (mmdet's ATSSAssigner).
_MIN_INSIDE_MARGIN = 0.01


@dataclass(frozen=True)
class GFLTargets:
    """Per-point training targets of a batch; ``N`` counts the points of all levels.

    Attributes:
        labels: ``[B, N]`` int64 class of the matched GT, 0 for negatives and invalid points.
        boxes: ``[B, N, 4]`` xyxy matched GT box in input pixels (zeros where unmatched).
        matched_gt: ``[B, N]`` int64 index into the image's GT list, -1 where unmatched.
        valid: ``[B, N]`` bool, False for points in the batch padding (mmdet's ``valid_flags``);
            invalid points carry no loss. ``labels > 0`` implies ``valid``.
    """

    labels: Tensor
    boxes: Tensor
    matched_gt: Tensor
    valid: Tensor

    @property
    def positive(self) -> Tensor:
        """``[B, N]`` bool mask of positive points."""
        return self.labels > 0

    @property
    def num_pos(self) -> Tensor:
        """Number of positive points in the batch (int64 scalar tensor, may be 0)."""
        return self.positive.sum()


def points_to_anchors(points: Tensor, point_strides: Tensor, anchor_scale: float) -> Tensor:
    """Square ``[N, 4]`` xyxy anchors of side ``anchor_scale · stride`` centred on the points."""
    half = (point_strides.float() * (anchor_scale / 2.0))[:, None]
    return torch.cat([points - half, points + half], dim=-1)


@torch.no_grad()
def assign_atss(
    anchors: Tensor, num_anchors_per_level: Sequence[int], gt_boxes: Tensor, topk: int = 9
) -> Tensor:
    """Assign anchors of one image to GT boxes with ATSS.

    For each GT: per level, the ``topk`` anchors whose centres are closest to the GT centre are
    candidates; a candidate is positive if its IoU is at least mean + std (unbiased) of the
    candidates' IoUs and its centre lies inside the GT. An anchor positive for several GTs takes
    the one with the highest IoU.

    Args:
        anchors: ``[N, 4]`` xyxy anchors, levels concatenated in order.
        num_anchors_per_level: Anchors of each level; sums to ``N``.
        gt_boxes: ``[G, 4]`` xyxy GT boxes (``G`` may be 0).
        topk: Candidates per level and GT.

    Returns:
        ``[N]`` int64 index of the matched GT, -1 for negatives.
    """
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    matched = torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    if num_gt == 0 or num_anchors == 0:
        return matched
    anchors = anchors.float()
    gt_boxes = gt_boxes.float()
    ious = box_iou(anchors, gt_boxes)  # [N, G]
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # [N, 2]
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # [G, 2]
    # Squared distances rank like distances; explicit differences avoid cdist's matmul rounding.
    sq_dist = (anchor_centres[:, None, :] - gt_centres[None, :, :]).pow(2).sum(dim=-1)  # [N, G]
    candidates_per_level = []
    start = 0
    for count in num_anchors_per_level:
        if count > 0:
            k = min(topk, count)
            nearest = sq_dist[start : start + count].topk(k, dim=0, largest=False).indices
            candidates_per_level.append(nearest + start)
        start += count
    candidates = torch.cat(candidates_per_level, dim=0)  # [K, G]
    candidate_ious = ious.gather(0, candidates)  # [K, G]
    threshold = candidate_ious.mean(dim=0) + candidate_ious.std(dim=0)  # [G]
    centres = anchor_centres[candidates]  # [K, G, 2]
    margins = torch.cat([centres - gt_boxes[None, :, :2], gt_boxes[None, :, 2:] - centres], dim=-1)
    is_pos = (candidate_ious >= threshold) & (margins.amin(dim=-1) > _MIN_INSIDE_MARGIN)
    neg_inf = torch.full_like(ious, float("-inf"))
    pos_ious = neg_inf.scatter(0, candidates, candidate_ious.where(is_pos, float("-inf")))
    best_iou, best_gt = pos_ious.max(dim=1)  # [N]
    return best_gt.where(best_iou > float("-inf"), matched)


@torch.no_grad()
def assign_gfl_targets(
    targets: Sequence[Mapping[str, Any]],
    points: Tensor,
    point_strides: Tensor,
    num_points_per_level: Sequence[int],
    image_sizes: Sequence[tuple[int, int]] | None = None,
    *,
    topk: int = 9,
    anchor_scale: float = 8.0,
) -> GFLTargets:
    """Run :func:`assign_atss` per image and gather labels and boxes for every point.

    Args:
        targets: Per image ``{"boxes": [G, 4] xyxy, "labels": [G] int64 in 1..K}`` in the same
            (transformed) pixel frame as ``points``.
        points: ``[N, 2]`` xy points of all levels.
        point_strides: ``[N]`` stride of each point.
        num_points_per_level: Points per level; sums to ``N``.
        image_sizes: ``(height, width)`` of each image before batch padding. Points at or beyond
            these are invalid: they are neither candidates nor negatives. ``None``: all valid.
        topk: ATSS candidates per level and GT.
        anchor_scale: Anchor side in strides.

    Returns:
        The batch's :class:`GFLTargets`.
    """
    anchors = points_to_anchors(points, point_strides, anchor_scale)
    labels, boxes, matched, valid = [], [], [], []
    for index, target in enumerate(targets):
        gt_boxes: Tensor = target["boxes"]
        gt_labels: Tensor = target["labels"]
        if image_sizes is None:
            valid_i = torch.ones(points.shape[0], dtype=torch.bool, device=points.device)
        else:
            height, width = image_sizes[index]
            valid_i = (points[:, 0] < width) & (points[:, 1] < height)
        matched_i = _assign_valid(anchors, num_points_per_level, gt_boxes, valid_i, topk)
        found = matched_i >= 0
        safe = matched_i.clamp(min=0)
        if gt_boxes.shape[0] == 0:
            labels_i = torch.zeros_like(matched_i)
            boxes_i = anchors.new_zeros(anchors.shape)
        else:
            labels_i = gt_labels.to(matched_i.device)[safe].where(found, 0)
            boxes_i = gt_boxes.float()[safe].where(found[:, None], 0.0)
        labels.append(labels_i)
        boxes.append(boxes_i)
        matched.append(matched_i)
        valid.append(valid_i)
    return GFLTargets(
        labels=torch.stack(labels),
        boxes=torch.stack(boxes),
        matched_gt=torch.stack(matched),
        valid=torch.stack(valid),
    )


def _assign_valid(
    anchors: Tensor, num_per_level: Sequence[int], gt_boxes: Tensor, valid: Tensor, topk: int
) -> Tensor:
    """Run ATSS on the valid anchors only and scatter the result back to all ``N`` anchors."""
    if bool(valid.all()):
        return assign_atss(anchors, num_per_level, gt_boxes, topk)
    bounds = [0, *itertools.accumulate(num_per_level)]
    level_sums = [valid[start:end].sum() for start, end in itertools.pairwise(bounds)]
    counts: list[int] = torch.stack(level_sums).tolist()
    valid_index = valid.nonzero().squeeze(1)
    matched_valid = assign_atss(anchors[valid_index], counts, gt_boxes, topk)
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    matched[valid_index] = matched_valid
    return matched
