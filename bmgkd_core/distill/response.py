"""Response-level distillation terms (BMGKD module B, spec §4) and the ``logit_kd`` baseline.

Classification KD for sigmoid (dense) and softmax (RoI) heads, box KD with GIoU and
distribution KD (LD) on a selected set of anchors. The teacher is always detached and every
computation runs in float32. Inputs are flattened over images x levels x locations x anchors by
the caller; boxes are xyxy absolute input-image pixels; a label ``c`` indexes column ``c``.
Each loss is 0 (finite, with a grad path) when its selection is empty, and ``num_pos`` is
clamped to >= 1.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from bmgkd_core.distill._weighting import NumPos, check_pair, normalizer, row_weights, weighted_sum

__all__ = [
    "BoxKDLoss",
    "DistributionKDLoss",
    "DynamicClsKDLoss",
    "LogitKDLoss",
    "RoIClsKDLoss",
    "compute_giou_loss",
    "compute_softmax_kl",
]


def compute_softmax_kl(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float
) -> Tensor:
    """Per-row ``T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))`` over the last dim, in float32.

    Args:
        student_logits: ``[..., n]`` logits.
        teacher_logits: ``[..., n]`` logits (detached inside).
        temperature: ``T``.

    Returns:
        ``[...]`` float32 non-negative KL values, 0 where the logits are equal.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    scaled: Tensor = kl * temperature**2
    return scaled


def compute_giou_loss(student_boxes: Tensor, teacher_boxes: Tensor) -> Tensor:
    """Per-row ``1 − GIoU(b_s, b_t)`` for paired ``[M, 4]`` xyxy boxes; the teacher is detached."""
    loss: Tensor = generalized_box_iou_loss(
        student_boxes.float(), teacher_boxes.detach().float(), reduction="none"
    )
    return loss


class DynamicClsKDLoss(nn.Module):
    """Binary classification KD with the dynamic difference mask (BMGKD ``L_cls``, spec §4.1).

    For sigmoid heads (RetinaNet, GFL; the RPN objectness with ``K = 1``)::

        p_t = σ(z_t) ; p_s = σ(z_s) ; W = |p_t − p_s|^β  (detached)
        loss = Σ_{i∈V} v_i Σ_c W_ic · BCEWithLogits(z_s_ic, p_t_ic) / max(num_pos, 1)

    ``W`` is 0 where the student already matches the teacher, so the loss is 0 when
    ``z_s == z_t``. Same behaviour in train and eval mode.

    Args:
        beta: Exponent ``β`` of the mask (spec default 1).
    """

    def __init__(self, beta: float = 1.0) -> None:
        """Validate and store the hyperparameters (see the class docstring)."""
        super().__init__()
        self.beta = beta

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        *,
        valid: Tensor | None = None,
        num_pos: NumPos = 1.0,
    ) -> Tensor:
        """Compute ``L_cls``.

        Args:
            student_logits: ``[A, K]`` student sigmoid logits; gradients flow here.
            teacher_logits: ``[A, K]`` teacher sigmoid logits; detached inside.
            valid: ``[A]`` bool mask or float weights ``v_i`` (mmdet ``label_weights``);
                ``None`` means all anchors with weight 1.
            num_pos: Number of positive anchors from the student's assigner.

        Returns:
            0-dim float32 loss.

        Raises:
            ValueError: On mismatched shapes.
        """
        check_pair(type(self).__name__, student_logits, teacher_logits, 2, "logits [A, K]")
        weights = row_weights(type(self).__name__, valid, student_logits)
        z_s = student_logits.float()
        p_t = torch.sigmoid(teacher_logits.detach().float())
        mask = (p_t - torch.sigmoid(z_s.detach())).abs().pow(self.beta)
        bce = F.binary_cross_entropy_with_logits(z_s, p_t, reduction="none")
        per_anchor = (mask * bce).sum(dim=1)  # [A]
        return weighted_sum(per_anchor, weights) / normalizer(num_pos, z_s)


class RoIClsKDLoss(nn.Module):
    """Softmax RoI-head KD weighted by the total-variation gap (BMGKD ``L_cls_roi``, spec §4.1).

    For ``R`` sampled RoIs with ``K + 1``-way softmax logits (teacher run on the student's RoIs)::

        p = softmax(z / T) ; m_r = ½ Σ_c |p_t − p_s|  (detached, in [0, 1])
        loss = Σ_r m_r · T² · KL(p_t_r ‖ p_s_r) / max(R, 1)

    Args:
        temperature: ``T`` (spec default 1).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        """Validate and store the hyperparameters (see the class docstring)."""
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """Compute the RoI classification KD.

        Args:
            student_logits: ``[R, K + 1]`` student RoI logits; gradients flow here.
            teacher_logits: ``[R, K + 1]`` teacher RoI logits for the same RoIs; detached.

        Returns:
            0-dim float32 loss, 0 when the logits are equal or ``R == 0``.

        Raises:
            ValueError: On mismatched shapes.
        """
        check_pair(type(self).__name__, student_logits, teacher_logits, 2, "logits [R, K+1]")
        t = self.temperature
        with torch.no_grad():
            p_s = torch.softmax(student_logits.float() / t, dim=1)
            p_t = torch.softmax(teacher_logits.float() / t, dim=1)
            gap = 0.5 * (p_t - p_s).abs().sum(dim=1)  # [R]
        kl = compute_softmax_kl(student_logits, teacher_logits, t)  # [R]
        return (gap * kl).sum() / max(student_logits.shape[0], 1)


class LogitKDLoss(nn.Module):
    """Plain response KD on class logits (baseline for the ``logit_kd`` preset).

    ``activation="sigmoid"`` (dense heads): per class, the Bernoulli KL
    ``KL(σ(z_t/T) ‖ σ(z_s/T))`` = ``BCEWithLogits(z_s/T, p_t) − H(p_t)``, which has the gradient
    of BCE with teacher probabilities but is 0 when the logits are equal; summed over classes.
    ``activation="softmax"`` (RoI head): ``KL(softmax(z_t/T) ‖ softmax(z_s/T))`` per row. Both
    are multiplied by ``T²`` and averaged over the valid rows (``Σ_i v_i · kl_i / max(Σ v, 1)``).

    Args:
        temperature: ``T``.
        activation: ``"sigmoid"`` or ``"softmax"``.
    """

    def __init__(
        self, temperature: float = 1.0, activation: Literal["sigmoid", "softmax"] = "sigmoid"
    ) -> None:
        """Validate and store the hyperparameters (see the class docstring)."""
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        self.temperature = temperature
        self.activation = activation

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, *, valid: Tensor | None = None
    ) -> Tensor:
        """Compute the logit KD.

        Args:
            student_logits: ``[A, K]`` logits (``[R, K + 1]`` for softmax); gradients flow here.
            teacher_logits: Same shape as ``student_logits``; detached inside.
            valid: ``[A]`` bool mask or float row weights; ``None`` means all rows.

        Returns:
            0-dim float32 loss.

        Raises:
            ValueError: On mismatched shapes.
        """
        check_pair(type(self).__name__, student_logits, teacher_logits, 2, "logits [A, K]")
        weights = row_weights(type(self).__name__, valid, student_logits)
        t = self.temperature
        if self.activation == "softmax":
            per_row = compute_softmax_kl(student_logits, teacher_logits, t)
        else:
            z_t = teacher_logits.detach().float() / t
            p_t = torch.sigmoid(z_t)
            bce_s = F.binary_cross_entropy_with_logits(
                student_logits.float() / t, p_t, reduction="none"
            )
            entropy_t = F.binary_cross_entropy_with_logits(z_t, p_t, reduction="none")
            per_row = (bce_s - entropy_t).sum(dim=1) * t**2
        return weighted_sum(per_row, weights) / weights.sum().clamp(min=1.0)


class BoxKDLoss(nn.Module):
    """Weighted GIoU box KD on selected anchors or RoIs (BMGKD ``L_reg``, spec §4.2).

    ::

        loss = Σ_i w_i · (1 − GIoU(b_s_i, b_t_i)) / max(num_pos, 1)

    Boxes are xyxy absolute pixels (decoded by the caller); ``w_i`` is the selection quality
    ``q`` (``Selection.weights``). The teacher boxes are detached.
    """

    def forward(
        self,
        student_boxes: Tensor,
        teacher_boxes: Tensor,
        *,
        weights: Tensor | None = None,
        num_pos: NumPos = 1.0,
    ) -> Tensor:
        """Compute the box KD.

        Args:
            student_boxes: ``[M, 4]`` xyxy student boxes; gradients flow here.
            teacher_boxes: ``[M, 4]`` xyxy teacher boxes; detached inside.
            weights: ``[M]`` non-negative weights (or bool mask); ``None`` means 1.
            num_pos: Normaliser (positives of the student's assigner, or positive RoIs).

        Returns:
            0-dim float32 loss, 0 when the boxes are equal or ``M == 0``.

        Raises:
            ValueError: On mismatched shapes.
        """
        check_pair(type(self).__name__, student_boxes, teacher_boxes, 2, "boxes [M, 4]")
        w = row_weights(type(self).__name__, weights, student_boxes)
        per_box = compute_giou_loss(student_boxes, teacher_boxes)  # [M]
        return weighted_sum(per_box, w) / normalizer(num_pos, student_boxes)


class DistributionKDLoss(nn.Module):
    """Localization distillation on GFL edge distributions (LD, BMGKD ``L_ld``, spec §4.2).

    ::

        loss = Σ_i w_i · mean_side[ T² · KL(softmax(d_t/T) ‖ softmax(d_s/T)) ] / max(num_pos, 1)

    with ``mean_side`` = ¼ Σ over the 4 sides (l, t, r, b).

    Args:
        temperature: ``T`` (LD default 10).
    """

    def __init__(self, temperature: float = 10.0) -> None:
        """Validate and store the hyperparameters (see the class docstring)."""
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(
        self,
        student_dists: Tensor,
        teacher_dists: Tensor,
        *,
        weights: Tensor | None = None,
        num_pos: NumPos = 1.0,
    ) -> Tensor:
        """Compute the distribution KD.

        Args:
            student_dists: ``[M, 4, n_bins]`` student distribution logits; gradients flow here.
            teacher_dists: ``[M, 4, n_bins]`` teacher distribution logits; detached inside.
            weights: ``[M]`` non-negative weights (or bool mask); ``None`` means 1.
            num_pos: Normaliser.

        Returns:
            0-dim float32 loss, 0 when the logits are equal or ``M == 0``.

        Raises:
            ValueError: On mismatched shapes.
        """
        check_pair(type(self).__name__, student_dists, teacher_dists, 3, "dists [M, 4, n_bins]")
        w = row_weights(type(self).__name__, weights, student_dists)
        kl = compute_softmax_kl(student_dists, teacher_dists, self.temperature)  # [M, 4]
        return weighted_sum(kl.mean(dim=1), w) / normalizer(num_pos, student_dists)
