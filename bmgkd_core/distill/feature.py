"""Local key-feature alignment (BMGKD module A2, spec §3) and the PKD baseline.

``CosineMaskFeatureLoss`` is the reconstructed BMGKD ``L_local``: PKD-style standardisation
followed by an MSE weighted with joint spatial x channel masks that come from the cosine
*discrepancy* between teacher and student. ``PKDLoss`` is mmrazor's PKD (Cao et al., NeurIPS
2022, ``mmrazor/models/losses/pkd_loss.py``), used by the ``pkd`` preset.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CosineMaskFeatureLoss", "PKDLoss", "standardize_per_channel"]


def _check_feature_pair(name: str, student_feats: Tensor, teacher_feats: Tensor) -> None:
    if student_feats.dim() != 4 or student_feats.shape != teacher_feats.shape:
        raise ValueError(
            f"{name} expects student and teacher features [B, C, H, W] of the same shape, "
            f"got {tuple(student_feats.shape)} and {tuple(teacher_feats.shape)}"
        )


def standardize_per_channel(feats: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise each channel over ``(B, H, W)``: ``(F − mean) / (std + eps)`` in float32.

    The standard deviation is unbiased (as ``torch.std`` in mmrazor's PKD) except for a single
    element, where it falls back to the population one so the result stays finite.

    Args:
        feats: ``[B, C, H, W]`` features, any float dtype.
        eps: Added to the standard deviation.

    Returns:
        ``[B, C, H, W]`` float32 features with zero mean and (about) unit variance per channel.
    """
    feats = feats.float()
    correction = 1 if feats.numel() // max(feats.shape[1], 1) > 1 else 0
    mean = feats.mean(dim=(0, 2, 3), keepdim=True)
    std = feats.std(dim=(0, 2, 3), keepdim=True, correction=correction)
    return (feats - mean) / (std + eps)


def _normalized_entropy(probs: Tensor) -> Tensor:
    """Mean over rows of ``H(p) / log(n)`` for ``[B, n]`` distributions (1 = uniform)."""
    n = probs.shape[1]
    if n < 2:
        return probs.new_ones(())
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
    return (entropy / math.log(n)).mean()


class CosineMaskFeatureLoss(nn.Module):
    """Cosine-discrepancy masked, standardised feature MSE (BMGKD ``L_local``, spec §3).

    With ``Sn, Tn`` the per-channel standardised student and teacher maps (over ``B, H, W``)::

        d_sp[b,h,w] = (1 − cos(Sn[b,:,h,w], Tn[b,:,h,w])) / 2          # over channels
        d_ch[b,k]   = (1 − cos(Sn[b,k].flatten(), Tn[b,k].flatten())) / 2  # over H·W
        M_sp = H·W · softmax_{h,w}(d_sp / τ) ;  M_ch = C · softmax_k(d_ch / τ)   # mean 1 per image
        M    = M_sp[:, None] · M_ch[:, :, None, None]                    # [B, C, H, W]
        loss = 0.5 · mean_{b,k,h,w}( M · (Sn − Tn)² )

    The masks are computed under ``no_grad`` (they are weights, not learned) and the teacher is
    detached. Maths in float32; same behaviour in train and eval mode. After each forward,
    ``last_stats`` holds detached 0-dim tensors ``mask_entropy_sp`` and ``mask_entropy_ch``: the
    batch-mean entropy of the mask distributions ``M_sp / (H·W)`` and ``M_ch / C``, divided by
    ``log(H·W)`` and ``log(C)`` so that 1 means uniform at every level.

    Args:
        tau: Softmax temperature ``τ_m`` of both masks (spec §3 default 0.1).
        eps: Added to the standard deviation and used by the cosine similarity.
    """

    def __init__(self, tau: float = 0.1, eps: float = 1e-6) -> None:
        """Validate and store the hyperparameters (see the class docstring)."""
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = tau
        self.eps = eps
        self.last_stats: dict[str, Tensor] = {}

    @torch.no_grad()
    def _masks_from_standardized(
        self, student_norm: Tensor, teacher_norm: Tensor
    ) -> tuple[Tensor, Tensor]:
        b, c, h, w = student_norm.shape
        s_sp = F.cosine_similarity(student_norm, teacher_norm, dim=1, eps=self.eps)  # [B, H, W]
        s_ch = F.cosine_similarity(
            student_norm.flatten(2), teacher_norm.flatten(2), dim=2, eps=self.eps
        )  # [B, C]
        d_sp = (1.0 - s_sp.flatten(1)) / 2.0  # [B, H·W]
        d_ch = (1.0 - s_ch) / 2.0  # [B, C]
        mask_sp = (h * w) * torch.softmax(d_sp / self.tau, dim=1)
        mask_ch = c * torch.softmax(d_ch / self.tau, dim=1)
        return mask_sp.view(b, h, w), mask_ch

    def masks(self, student_feats: Tensor, teacher_feats: Tensor) -> tuple[Tensor, Tensor]:
        """Spatial and channel masks for a feature pair (detached).

        Args:
            student_feats: ``[B, C, H, W]`` student features.
            teacher_feats: ``[B, C, H, W]`` teacher features.

        Returns:
            ``(M_sp [B, H, W], M_ch [B, C])`` float32, each with mean 1 per image.

        Raises:
            ValueError: If the shapes differ or are not 4-D.
        """
        _check_feature_pair(type(self).__name__, student_feats, teacher_feats)
        student_norm = standardize_per_channel(student_feats.detach(), self.eps)
        teacher_norm = standardize_per_channel(teacher_feats.detach(), self.eps)
        return self._masks_from_standardized(student_norm, teacher_norm)

    def forward(self, student_feats: Tensor, teacher_feats: Tensor) -> Tensor:
        """Compute the level's masked local loss.

        Args:
            student_feats: ``[B, C, H, W]`` student (adapted) features; gradients flow here.
            teacher_feats: ``[B, C, H, W]`` teacher features; detached inside.

        Returns:
            0-dim float32 loss, 0 when the student equals the teacher.

        Raises:
            ValueError: If the shapes differ or are not 4-D.
        """
        _check_feature_pair(type(self).__name__, student_feats, teacher_feats)
        student_norm = standardize_per_channel(student_feats, self.eps)
        teacher_norm = standardize_per_channel(teacher_feats.detach(), self.eps)
        mask_sp, mask_ch = self._masks_from_standardized(student_norm.detach(), teacher_norm)
        mask = mask_sp[:, None] * mask_ch[:, :, None, None]  # [B, C, H, W]
        self.last_stats = {
            "mask_entropy_sp": _normalized_entropy(mask_sp.flatten(1) / mask_sp[0].numel()),
            "mask_entropy_ch": _normalized_entropy(mask_ch / mask_ch.shape[1]),
        }
        return 0.5 * (mask * (student_norm - teacher_norm).pow(2)).mean()


class PKDLoss(nn.Module):
    """Pearson-correlation feature distillation, mmrazor's ``PKDLoss`` (baseline ``pkd`` preset).

    Both maps are standardised per channel over ``(B, H, W)`` and compared with
    ``loss = mean((Sn − Tn)²) / 2``, which equals ``1 − r`` (Pearson ``r``) up to the ``eps``
    and unbiased-std details. The loss weight (6 for Faster R-CNN, 10 for RetinaNet in the
    mmrazor configs) is applied by the caller. The teacher is detached; maths in float32.

    Args:
        eps: Added to the standard deviation.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        """Validate and store the hyperparameters (see the class docstring)."""
        super().__init__()
        self.eps = eps

    def forward(self, student_feats: Tensor, teacher_feats: Tensor) -> Tensor:
        """Compute the level's PKD loss.

        Args:
            student_feats: ``[B, C, H, W]`` student features; gradients flow here.
            teacher_feats: ``[B, C, H, W]`` teacher features; detached inside.

        Returns:
            0-dim float32 loss, 0 when the student equals the teacher.

        Raises:
            ValueError: If the shapes differ or are not 4-D (mmrazor's ``resize_stu`` is the
                Distiller's job here).
        """
        _check_feature_pair(type(self).__name__, student_feats, teacher_feats)
        student_norm = standardize_per_channel(student_feats, self.eps)
        teacher_norm = standardize_per_channel(teacher_feats.detach(), self.eps)
        return F.mse_loss(student_norm, teacher_norm) / 2.0
