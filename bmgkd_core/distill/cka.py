"""Global structural alignment with patch-based linear CKA (BMGKD module A1, spec §2).

Reconstructed from PCKA (Zhou et al., "Rethinking Centered Kernel Alignment in Knowledge
Distillation", IJCAI 2024, github Klayand/PCKA) with the spec §2.2 changes: centring over samples,
fp32 maths on Frobenius-normalised matrices, and the cheaper of the Gram and feature forms.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PatchCKALoss", "linear_cka"]

CKAForm = Literal["auto", "gram", "feature"]


def _check_cka_inputs(x: Tensor, y: Tensor) -> None:
    if x.dim() != 3 or y.dim() != 3 or x.shape[:2] != y.shape[:2]:
        raise ValueError(
            "linear_cka expects x [G, N, Dx] and y [G, N, Dy] with the same G and N, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def linear_cka(
    x: Tensor,
    y: Tensor,
    *,
    center: bool = True,
    eps: float = 1e-6,
    form: CKAForm = "auto",
) -> Tensor:
    """Linear CKA between paired sample sets, batched over a leading group dimension (spec §2.2).

    With ``K = X Xᵀ`` and ``L = Y Yᵀ`` (samples along ``N``)::

        cka(X, Y) = tr(K L) / (‖K‖_F ‖L‖_F)                       # Gram form, N x N
                  = ‖Yᵀ X‖_F² / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)                # feature form, D x D

    Both forms give the same value; ``form="auto"`` picks the Gram form when
    ``N <= max(Dx, Dy)`` and the feature form otherwise. Inputs are cast to float32, centred over
    the sample axis when ``center`` (textbook CKA; ``center=False`` is the uncentred alignment of
    the PCKA code) and divided by their Frobenius norm per group, so the result is scale-invariant
    and safe under AMP. Denominators are clamped to ``eps`` (not offset by it), so
    ``cka(X, X) == 1`` up to rounding; a group whose ``X`` or ``Y`` is all zero gives 0.

    Args:
        x: ``[G, N, Dx]`` features, ``N`` samples per group.
        y: ``[G, N, Dy]`` features with the same ``G`` and ``N``.
        center: Subtract the per-group mean over the ``N`` samples first.
        eps: Clamp for the norms and the denominator.
        form: ``"auto"``, or force ``"gram"`` / ``"feature"`` (used by the tests).

    Returns:
        ``[G]`` float32 CKA values in ``[0, 1]``; differentiable with respect to both inputs.

    Raises:
        ValueError: If the shapes are not ``[G, N, Dx]`` / ``[G, N, Dy]``.
    """
    _check_cka_inputs(x, y)
    x, y = x.float(), y.float()
    if center:
        x = x - x.mean(dim=1, keepdim=True)
        y = y - y.mean(dim=1, keepdim=True)
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp_min(eps)
    y = y / torch.linalg.matrix_norm(y, keepdim=True).clamp_min(eps)
    n = x.shape[1]
    if form == "gram" or (form == "auto" and n <= max(x.shape[2], y.shape[2])):
        k = torch.bmm(x, x.transpose(1, 2))  # [G, N, N]
        gram_y = torch.bmm(y, y.transpose(1, 2))  # [G, N, N]
        numerator = (k * gram_y).sum(dim=(1, 2))
        denominator = torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(gram_y)
    else:
        cross = torch.bmm(y.transpose(1, 2), x)  # [G, Dy, Dx]
        numerator = cross.pow(2).sum(dim=(1, 2))
        denominator = torch.linalg.matrix_norm(
            torch.bmm(x.transpose(1, 2), x)
        ) * torch.linalg.matrix_norm(torch.bmm(y.transpose(1, 2), y))
    cka: Tensor = numerator / denominator.clamp_min(eps)
    return cka


def _patchify(feats: Tensor, patch_size: int) -> Tensor:
    """``[B, C, u·p, v·p]`` -> ``[C, u·v, B·p·p]``.

    PCKA's ``c b (u h) (v w) -> c (u v) (b h w)``.
    """
    b, c, h, w = feats.shape
    u, v = h // patch_size, w // patch_size
    patches = feats.reshape(b, c, u, patch_size, v, patch_size).permute(1, 2, 4, 0, 3, 5)
    return patches.reshape(c, u * v, b * patch_size * patch_size)


class PatchCKALoss(nn.Module):
    """Patch-based centred CKA loss for one FPN level (BMGKD ``L_cka``, spec §2.2).

    Both maps are resized bilinearly (``align_corners=False``) up to the next multiple of
    ``patch_size`` in H and W when needed, then rearranged to ``X ∈ [C, N_P, B·p²]`` with
    ``N_P = (H/p)(W/p)`` patches. Per channel ``c``::

        cka_intra[c] = linear_cka(X_s[c], X_t[c])        # samples = the N_P patches
        cka_inter[c] = linear_cka(X_s[c]ᵀ, X_t[c]ᵀ)      # samples = the B·p² in-patch positions
        loss = mean_c[ λ_intra (1 − cka_intra[c]) + λ_inter (1 − cka_inter[c]) ]

    The intra term is skipped when ``N_P < min_patches`` (centred CKA over 1–3 samples is
    meaningless); the inter term is always kept. A weight of 0 skips its term entirely (PCKA's
    RetinaNet config uses the intra term only). The teacher is detached; the computation runs in
    float32 whatever the input dtype, in train and eval mode alike.

    After each forward, ``last_stats`` holds detached 0-dim float32 tensors (no host sync):
    ``cka_intra`` and ``cka_inter`` (channel means; a key is absent when its term was skipped)
    and ``num_patches``.

    Args:
        intra_weight: ``λ_intra`` (spec §6 default 10).
        inter_weight: ``λ_inter`` (spec §6 default 10).
        patch_size: Patch side ``p`` in feature pixels (16 in PCKA).
        center: Centre over samples (``False`` reproduces the PCKA code).
        min_patches: Smallest ``N_P`` for which the intra term is computed.
    """

    def __init__(
        self,
        intra_weight: float = 10.0,
        inter_weight: float = 10.0,
        patch_size: int = 16,
        center: bool = True,
        min_patches: int = 4,
    ) -> None:
        """Validate and store the hyperparameters (see the class docstring)."""
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.intra_weight = intra_weight
        self.inter_weight = inter_weight
        self.patch_size = patch_size
        self.center = center
        self.min_patches = min_patches
        self.last_stats: dict[str, Tensor] = {}

    def _pad_to_patches(self, feats: Tensor) -> Tensor:
        h, w = feats.shape[-2:]
        p = self.patch_size
        size = (math.ceil(h / p) * p, math.ceil(w / p) * p)
        if size == (h, w):
            return feats
        return F.interpolate(feats, size=size, mode="bilinear", align_corners=False)

    def forward(self, student_feats: Tensor, teacher_feats: Tensor) -> Tensor:
        """Compute the level's CKA loss.

        Args:
            student_feats: ``[B, C, H, W]`` student (adapted) features; gradients flow here.
            teacher_feats: ``[B, C, H, W]`` teacher features; detached inside.

        Returns:
            0-dim float32 loss, 0 when the student equals the teacher.

        Raises:
            ValueError: If the inputs are not 4-D with identical shapes (channel adapters and
                resizing across levels are the Distiller's job).
        """
        if student_feats.dim() != 4 or student_feats.shape != teacher_feats.shape:
            raise ValueError(
                "PatchCKALoss expects student and teacher features [B, C, H, W] of the same "
                f"shape, got {tuple(student_feats.shape)} and {tuple(teacher_feats.shape)}"
            )
        x_s = _patchify(self._pad_to_patches(student_feats.float()), self.patch_size)
        x_t = _patchify(self._pad_to_patches(teacher_feats.detach().float()), self.patch_size)
        num_patches = x_s.shape[1]
        loss = student_feats.float().sum() * 0.0  # keeps a grad path when both terms are skipped
        stats = {"num_patches": torch.tensor(float(num_patches), device=x_s.device)}
        if self.intra_weight != 0.0 and num_patches >= self.min_patches:
            cka_intra = linear_cka(x_s, x_t, center=self.center)  # [C]
            loss = loss + self.intra_weight * (1.0 - cka_intra).mean()
            stats["cka_intra"] = cka_intra.detach().mean()
        if self.inter_weight != 0.0:
            cka_inter = linear_cka(x_s.transpose(1, 2), x_t.transpose(1, 2), center=self.center)
            loss = loss + self.inter_weight * (1.0 - cka_inter).mean()
            stats["cka_inter"] = cka_inter.detach().mean()
        self.last_stats = stats
        return loss
