"""Classification–regression co-optimization loss (BMGKD module B3, spec §4.3).

Reconstructed from GFL's Quality Focal Loss (IoU-aware soft targets) and BCKD's
classification-gap-weighted localization distillation: each task's KD signal depends on the
other task's teacher–student agreement.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmgkd_core.distill._weighting import NumPos, check_pair, normalizer, row_weights, weighted_sum
from bmgkd_core.distill.response import compute_giou_loss
from bmgkd_core.distill.selection import Selection, paired_box_iou

__all__ = ["CoOptimizationLoss"]

_LOG_CLAMP = -100.0  # as torch's binary_cross_entropy clamps log(p)


def _binary_log_probs(logits: Tensor, labels: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    """``(log p, log(1 − p))`` of class ``labels[i]`` in row ``i`` of ``[M, K]`` logits."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    if activation == "sigmoid":
        z = logits[rows, labels]
        return F.logsigmoid(z), F.logsigmoid(-z)
    log_norm = torch.logsumexp(logits, dim=1)  # [M]
    log_p = logits[rows, labels] - log_norm
    others = logits.index_put((rows, labels), logits.new_tensor(float("-inf")))
    log_not_p = torch.logsumexp(others, dim=1) - log_norm
    return log_p.clamp(min=_LOG_CLAMP), log_not_p.clamp(min=_LOG_CLAMP)


class CoOptimizationLoss(nn.Module):
    """Co-optimization of classification and box KD (BMGKD ``L_co``, spec §4.3).

    With ``p = σ(z)`` (dense heads) or ``p = softmax(z)`` (RoI head), selection ``H`` with GT
    class ``c_i`` and weights ``w_i`` (:class:`~bmgkd_core.distill.selection.Selection`)::

        (a) y_i = p_t[i, c_i] · IoU(b_s_i, b_t_i)        # IoU detached unless detach_iou=False
            L_co_cls = Σ_{i∈H} w_i · |y_i − p_s[i, c_i]|^β · BCE(p_s[i, c_i], y_i) / N_pos
        (b) m_i = max_c |p_t_ic − p_s_ic|  (detached; background column excluded)
            L_co_reg = Σ_{i∈V} v_i · m_i · (1 − GIoU(b_s_i, b_t_i)) / N_pos
        loss = cls_weight · L_co_cls + reg_weight · L_co_reg

    The modulating factor ``|y − p_s|^β`` is not detached, as in GFL's QFL. Teacher logits and
    boxes are detached; maths in float32; same behaviour in train and eval mode. The BCE is
    computed from log-probabilities, so it is finite for saturated logits.

    Args:
        cls_weight: ``λ_co_cls`` (spec §6 default 1).
        reg_weight: ``λ_co_reg`` (spec §6 default 2).
        beta: Exponent ``β`` of the modulating factor.
        detach_iou: Detach ``IoU(b_s, b_t)`` in the soft target (``False`` lets the cls KD
            send gradient into the student's boxes).
        activation: ``"sigmoid"`` (RetinaNet, GFL) or ``"softmax"`` (Faster R-CNN RoI head).
        background_class: Column excluded from ``m_i`` (torchvision RoI heads: 0); ``None`` for
            sigmoid heads without a background column.
    """

    def __init__(
        self,
        cls_weight: float = 1.0,
        reg_weight: float = 2.0,
        beta: float = 1.0,
        detach_iou: bool = True,
        activation: Literal["sigmoid", "softmax"] = "sigmoid",
        background_class: int | None = None,
    ) -> None:
        """Validate and store the hyperparameters (see the class docstring)."""
        super().__init__()
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        self.cls_weight = cls_weight
        self.reg_weight = reg_weight
        self.beta = beta
        self.detach_iou = detach_iou
        self.activation = activation
        self.background_class = background_class

    def _probs(self, logits: Tensor) -> Tensor:
        if self.activation == "sigmoid":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)

    def _cls_term(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        student_boxes: Tensor,
        teacher_boxes: Tensor,
        selection: Selection,
    ) -> Tensor:
        """``Σ_{i∈H} w_i |y_i − p_s|^β BCE(p_s, y_i)`` (not yet normalised)."""
        idx, labels = selection.anchor_idx, selection.labels
        rows = torch.arange(idx.shape[0], device=idx.device)
        with torch.no_grad():
            p_t = self._probs(teacher_logits[idx])[rows, labels]  # [M]
        iou = paired_box_iou(student_boxes[idx], teacher_boxes[idx])  # teacher already detached
        target = p_t * (iou.detach() if self.detach_iou else iou)
        log_p, log_not_p = _binary_log_probs(student_logits[idx], labels, self.activation)
        bce = -(target * log_p + (1.0 - target) * log_not_p)
        modulator = (target - log_p.exp()).abs().pow(self.beta)
        return weighted_sum(modulator * bce, selection.weights.detach().float())

    def _reg_term(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        student_boxes: Tensor,
        teacher_boxes: Tensor,
        valid: Tensor | None,
    ) -> Tensor:
        """``Σ_{i∈V} v_i m_i (1 − GIoU(b_s, b_t))`` (not yet normalised)."""
        weights = row_weights(type(self).__name__, valid, student_logits)
        with torch.no_grad():
            gap = (self._probs(teacher_logits) - self._probs(student_logits)).abs()  # [A, K]
            if self.background_class is not None:
                gap[:, self.background_class] = 0.0
            max_gap = gap.amax(dim=1) if gap.shape[1] else gap.new_zeros(gap.shape[0])
        per_anchor = max_gap * compute_giou_loss(student_boxes, teacher_boxes)  # [A]
        return weighted_sum(per_anchor, weights)

    def compute_terms(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        student_boxes: Tensor,
        teacher_boxes: Tensor,
        selection: Selection,
        *,
        valid: Tensor | None = None,
        num_pos: NumPos = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """Weighted terms ``(cls_weight · L_co_cls, reg_weight · L_co_reg)``, for logging apart.

        Args: as :meth:`forward`.

        Returns:
            Two 0-dim float32 losses.

        Raises:
            ValueError: On mismatched shapes.
        """
        name = type(self).__name__
        check_pair(name, student_logits, teacher_logits, 2, "logits [A, K]")
        check_pair(name, student_boxes, teacher_boxes, 2, "boxes [A, 4]")
        if student_boxes.shape[0] != student_logits.shape[0]:
            raise ValueError(
                f"{name} expects as many boxes as logit rows, got {tuple(student_boxes.shape)} "
                f"and {tuple(student_logits.shape)}"
            )
        z_s, z_t = student_logits.float(), teacher_logits.detach().float()
        b_s, b_t = student_boxes.float(), teacher_boxes.detach().float()
        norm = normalizer(num_pos, z_s)
        cls_term = self._cls_term(z_s, z_t, b_s, b_t, selection) / norm
        reg_term = self._reg_term(z_s, z_t, b_s, b_t, valid) / norm
        return self.cls_weight * cls_term, self.reg_weight * reg_term

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        student_boxes: Tensor,
        teacher_boxes: Tensor,
        selection: Selection,
        *,
        valid: Tensor | None = None,
        num_pos: NumPos = 1.0,
    ) -> Tensor:
        """Compute ``L_co``.

        Args:
            student_logits: ``[A, K]`` student class logits (``[R, K + 1]`` for softmax).
            teacher_logits: Same shape; detached inside.
            student_boxes: ``[A, 4]`` xyxy student boxes; gradients flow here.
            teacher_boxes: ``[A, 4]`` xyxy teacher boxes; detached inside.
            selection: High-quality set ``H`` with ``anchor_idx`` indexing the ``A`` rows.
            valid: ``[A]`` bool mask or float weights of ``V`` for term (b); ``None`` = all.
            num_pos: Normaliser ``N_pos`` (clamped to >= 1).

        Returns:
            0-dim float32 loss; term (a) is 0 when ``H`` is empty, and term (b) is 0 when the
            boxes are equal.

        Raises:
            ValueError: On mismatched shapes.
        """
        cls_term, reg_term = self.compute_terms(
            student_logits,
            teacher_logits,
            student_boxes,
            teacher_boxes,
            selection,
            valid=valid,
            num_pos=num_pos,
        )
        return cls_term + reg_term
