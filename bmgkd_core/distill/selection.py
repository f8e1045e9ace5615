"""High-quality teacher prediction selection (BMGKD module B2, spec §4.2).

Localization is distilled only from teacher boxes that are good in absolute terms (PGD quality
``q = p_t^(1−α) · IoU(b_t, g)^α``, per-GT top-k with a dynamic threshold) and better than the
student's own box for the same GT, so a weaker teacher prediction does not pull the student the
wrong way. Everything here runs under ``no_grad``: the outputs are indices and weights.
Boxes are xyxy absolute input-image pixels; a label ``c`` indexes column ``c`` of the scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = [
    "Selection",
    "concat_selections",
    "paired_box_iou",
    "select_high_quality_boxes",
    "select_high_quality_rois",
]


@dataclass(frozen=True, eq=False)
class Selection:
    """Anchors (or RoIs) selected for box KD, each paired with one GT.

    Attributes:
        anchor_idx: ``[M]`` int64 row indices into the flattened anchors (or RoIs).
        gt_idx: ``[M]`` int64 index of the GT each row was selected for.
        labels: ``[M]`` int64 class of that GT (a column index of the class scores).
        weights: ``[M]`` float32 detached quality ``q`` used as the KD weight ``w_i``.
    """

    anchor_idx: Tensor
    gt_idx: Tensor
    labels: Tensor
    weights: Tensor

    def __len__(self) -> int:
        """Number of selected rows ``M``."""
        return int(self.anchor_idx.shape[0])

    @classmethod
    def empty(cls, device: torch.device | str | None = None) -> Selection:
        """An empty selection (``M = 0``) on ``device``."""
        index = torch.zeros(0, dtype=torch.int64, device=device)
        weights = torch.zeros(0, dtype=torch.float32, device=device)
        return cls(anchor_idx=index, gt_idx=index.clone(), labels=index.clone(), weights=weights)


def concat_selections(
    selections: Sequence[Selection],
    num_anchors_per_image: Sequence[int],
    num_gts_per_image: Sequence[int],
) -> Selection:
    """Join per-image selections into one over the batch-flattened anchors and GTs.

    Args:
        selections: One selection per image, in batch order.
        num_anchors_per_image: Anchors (rows) per image, to offset ``anchor_idx``.
        num_gts_per_image: GTs per image, to offset ``gt_idx``.

    Returns:
        The concatenated selection (empty when ``selections`` is empty).

    Raises:
        ValueError: If the three sequences have different lengths.
    """
    if not len(selections) == len(num_anchors_per_image) == len(num_gts_per_image):
        raise ValueError(
            f"got {len(selections)} selections, {len(num_anchors_per_image)} anchor counts and "
            f"{len(num_gts_per_image)} GT counts"
        )
    if not selections:
        return Selection.empty()
    anchor_offset, gt_offset = 0, 0
    anchor_idx, gt_idx = [], []
    for selection, num_anchors, num_gts in zip(
        selections, num_anchors_per_image, num_gts_per_image, strict=True
    ):
        anchor_idx.append(selection.anchor_idx + anchor_offset)
        gt_idx.append(selection.gt_idx + gt_offset)
        anchor_offset += num_anchors
        gt_offset += num_gts
    return Selection(
        anchor_idx=torch.cat(anchor_idx),
        gt_idx=torch.cat(gt_idx),
        labels=torch.cat([s.labels for s in selections]),
        weights=torch.cat([s.weights for s in selections]),
    )


def paired_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Elementwise IoU of paired xyxy boxes ``[N, 4]`` x ``[N, 4]`` -> ``[N]`` float32.

    Differentiable; degenerate (zero-area) pairs give 0 instead of NaN.
    """
    boxes1, boxes2 = boxes1.float(), boxes2.float()
    top_left = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(dim=1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area1 + area2 - inter + eps)


def _check_rows(name: str, tensor: Tensor, rows: int, cols: int | None) -> None:
    bad = tensor.dim() != (1 if cols is None else 2) or tensor.shape[0] != rows
    if not bad and cols is not None and cols > 0:
        bad = tensor.shape[1] != cols
    if bad:
        expected = f"[{rows}]" if cols is None else f"[{rows}, {cols if cols > 0 else 'K'}]"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(tensor.shape)}")


def _check_labels(labels: Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must index the {num_classes} score columns, got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def _centers_inside(centers: Tensor, gt_boxes: Tensor) -> Tensor:
    """``[A, G]`` bool: anchor centre strictly inside the GT box."""
    x, y = centers[:, 0, None], centers[:, 1, None]  # [A, 1]
    return (
        (x > gt_boxes[None, :, 0])
        & (x < gt_boxes[None, :, 2])
        & (y > gt_boxes[None, :, 1])
        & (y < gt_boxes[None, :, 3])
    )


def _keep_topk(
    quality: Tensor, iou_t: Tensor, iou_s: Tensor | None, topk: int, fixed_iou: float | None
) -> tuple[Tensor, Tensor]:
    """Per-GT top-k candidates and which of them pass the thresholds: ``([k, G], [k, G])``.

    ``iou_s`` is ``None`` when the teacher-better test is off.
    """
    k = min(topk, quality.shape[0])
    top_q, top_idx = quality.topk(k, dim=0)  # [k, G]
    if fixed_iou is None:
        threshold = top_q.mean(dim=0) + top_q.std(dim=0, correction=1 if k > 1 else 0)
        keep = top_q >= threshold
    else:
        keep = iou_t.gather(0, top_idx) >= fixed_iou
    keep &= top_q > 0
    if iou_s is not None:
        keep &= iou_t.gather(0, top_idx) > iou_s.gather(0, top_idx)
    return top_idx, keep


@torch.no_grad()
def select_high_quality_boxes(
    teacher_probs: Tensor,
    teacher_boxes: Tensor,
    student_boxes: Tensor,
    anchor_centers: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    alpha: float = 0.8,
    topk: int = 30,
    require_teacher_better: bool = True,
    fixed_iou: float | None = None,
) -> Selection:
    """Select high-quality teacher boxes of one image for a dense head (spec §4.2).

    ::

        U_t = IoU(b_t, G) ; U_s = IoU(b_s, G)                                # [A, G]
        q_ig = p_t[i, c_g]^(1−α) · U_t[i, g]^α · 1[centre(anchor_i) inside g]
        per GT g: top-k anchors by q; keep q ≥ mean + std of those k (or U_t ≥ fixed_iou),
                  q > 0 and, when required, U_t > U_s
        an anchor kept for several GTs keeps the GT with the largest q

    Args:
        teacher_probs: ``[A, K]`` teacher class probabilities (sigmoid scores; GFL joint scores).
        teacher_boxes: ``[A, 4]`` xyxy teacher boxes.
        student_boxes: ``[A, 4]`` xyxy student boxes.
        anchor_centers: ``[A, 2]`` xy anchor (or point) centres in pixels.
        gt_boxes: ``[G, 4]`` xyxy GT boxes.
        gt_labels: ``[G]`` int64 GT classes (columns of ``teacher_probs``).
        alpha: Exponent ``α`` of the IoU in ``q`` (PGD 0.8).
        topk: Candidates per GT (PGD 30).
        require_teacher_better: Keep only anchors with ``U_t > U_s``.
        fixed_iou: If given, replace the ``mean + std`` threshold with ``U_t ≥ fixed_iou``.

    Returns:
        The :class:`Selection` (empty when ``G == 0`` or ``A == 0``); ``weights`` = ``q``.

    Raises:
        ValueError: On inconsistent shapes or labels outside ``[0, K)``.
    """
    num_anchors, num_gts = teacher_boxes.shape[0], gt_boxes.shape[0]
    _check_rows("teacher_probs", teacher_probs, num_anchors, 0)
    for name, tensor, cols in (
        ("teacher_boxes", teacher_boxes, 4),
        ("student_boxes", student_boxes, 4),
        ("anchor_centers", anchor_centers, 2),
        ("gt_boxes", gt_boxes, 4),
    ):
        _check_rows(name, tensor, num_gts if name == "gt_boxes" else num_anchors, cols)
    _check_rows("gt_labels", gt_labels, num_gts, None)
    _check_labels(gt_labels, teacher_probs.shape[1])
    if num_gts == 0 or num_anchors == 0:
        return Selection.empty(teacher_boxes.device)
    gt = gt_boxes.float()
    iou_t = box_iou(teacher_boxes.float(), gt)  # [A, G]
    iou_s = box_iou(student_boxes.float(), gt) if require_teacher_better else None
    inside = _centers_inside(anchor_centers.float(), gt)  # [A, G]
    scores = teacher_probs.float()[:, gt_labels].clamp(min=0)  # [A, G]
    quality = scores.pow(1.0 - alpha) * iou_t.pow(alpha) * inside
    top_idx, keep = _keep_topk(quality, iou_t, iou_s, topk, fixed_iou)
    selected = torch.zeros_like(quality, dtype=torch.bool).scatter_(0, top_idx, keep)
    best_q, best_gt = torch.where(selected, quality, -1.0).max(dim=1)  # [A]
    anchor_idx = (best_q > 0).nonzero().squeeze(1)
    gt_idx = best_gt[anchor_idx]
    return Selection(
        anchor_idx=anchor_idx,
        gt_idx=gt_idx,
        labels=gt_labels[gt_idx].long(),
        weights=best_q[anchor_idx],
    )


@torch.no_grad()
def select_high_quality_rois(
    teacher_probs: Tensor,
    teacher_boxes: Tensor,
    student_boxes: Tensor,
    gt_boxes: Tensor,
    matched_idxs: Tensor,
    labels: Tensor,
    *,
    background_class: int = 0,
    iou_threshold: float = 0.5,
    alpha: float = 0.8,
    require_teacher_better: bool = True,
) -> Selection:
    """Select positive RoIs whose teacher box is good and better than the student's (spec §4.2).

    For RoI ``r`` matched to GT ``g_r`` of class ``c = labels[r]`` (boxes decoded for class
    ``c`` from the same proposal by the caller)::

        keep r if labels[r] is a foreground class, U_t(r) ≥ iou_threshold and U_t(r) > U_s(r)
        w_r = p_t[r, c]^(1−α) · U_t(r)^α                      # α = 0.8

    Args:
        teacher_probs: ``[R, K + 1]`` teacher softmax probabilities.
        teacher_boxes: ``[R, 4]`` xyxy teacher boxes for class ``labels[r]``.
        student_boxes: ``[R, 4]`` xyxy student boxes for class ``labels[r]``.
        gt_boxes: ``[G, 4]`` xyxy GT boxes of the image (or of the batch, with global indices).
        matched_idxs: ``[R]`` int64 index of the matched GT (clamped to >= 0, as torchvision's
            ``assign_targets_to_proposals`` returns it).
        labels: ``[R]`` int64 class per RoI; ``background_class`` and negatives (ignored) are
            never selected.
        background_class: Column of the background class (torchvision: 0).
        iou_threshold: Minimum teacher IoU with the GT.
        alpha: Exponent of the IoU in the weight.
        require_teacher_better: Keep only RoIs with ``U_t > U_s``.

    Returns:
        The :class:`Selection` with ``anchor_idx`` = RoI indices (empty when ``G == 0``).

    Raises:
        ValueError: On inconsistent shapes.
    """
    num_rois, num_gts = teacher_boxes.shape[0], gt_boxes.shape[0]
    _check_rows("teacher_probs", teacher_probs, num_rois, 0)
    _check_rows("teacher_boxes", teacher_boxes, num_rois, 4)
    _check_rows("student_boxes", student_boxes, num_rois, 4)
    _check_rows("gt_boxes", gt_boxes, num_gts, 4)
    _check_rows("matched_idxs", matched_idxs, num_rois, None)
    _check_rows("labels", labels, num_rois, None)
    if num_gts == 0 or num_rois == 0:
        return Selection.empty(teacher_boxes.device)
    gt_idx_all = matched_idxs.long().clamp(0, num_gts - 1)
    matched = gt_boxes[gt_idx_all]  # [R, 4]
    iou_t = paired_box_iou(teacher_boxes, matched)  # [R]
    keep = (labels >= 0) & (labels != background_class) & (iou_t >= iou_threshold)
    if require_teacher_better:
        keep &= iou_t > paired_box_iou(student_boxes, matched)
    roi_idx = keep.nonzero().squeeze(1)
    roi_labels = labels[roi_idx].long()
    _check_labels(roi_labels, teacher_probs.shape[1])
    scores = teacher_probs.float()[roi_idx, roi_labels].clamp(min=0)
    return Selection(
        anchor_idx=roi_idx,
        gt_idx=gt_idx_all[roi_idx],
        labels=roi_labels,
        weights=scores.pow(1.0 - alpha) * iou_t[roi_idx].pow(alpha),
    )
