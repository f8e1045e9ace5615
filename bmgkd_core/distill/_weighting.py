"""Internal helpers shared by the response-KD losses: input checks, row weights, normalisers."""

from __future__ import annotations

from typing import TypeAlias

import torch
from torch import Tensor

NumPos: TypeAlias = float | Tensor


def check_pair(name: str, student: Tensor, teacher: Tensor, ndim: int, what: str) -> None:
    """Raise ``ValueError`` unless both tensors have ``ndim`` dims and the same shape."""
    if student.dim() != ndim or student.shape != teacher.shape:
        raise ValueError(
            f"{name} expects student and teacher {what} of the same shape, "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def row_weights(name: str, weights: Tensor | None, reference: Tensor) -> Tensor:
    """Float32 ``[N]`` weights for the ``N`` rows of ``reference`` (all ones when ``None``).

    ``weights`` may be a bool mask (``valid``) or non-negative float weights of shape ``[N]``;
    they are detached.
    """
    rows = reference.shape[0]
    if weights is None:
        return torch.ones(rows, dtype=torch.float32, device=reference.device)
    if weights.shape != (rows,):
        raise ValueError(
            f"{name} expects weights/valid of shape [{rows}], got {tuple(weights.shape)}"
        )
    return weights.detach().to(device=reference.device, dtype=torch.float32)


def normalizer(num_pos: NumPos, reference: Tensor) -> Tensor:
    """``num_pos`` as a detached float32 0-dim tensor on ``reference``'s device, clamped to >= 1."""
    value = torch.as_tensor(num_pos, dtype=torch.float32, device=reference.device)
    return value.detach().clamp(min=1.0)


def weighted_sum(per_row: Tensor, weights: Tensor) -> Tensor:
    """``Σ_i w_i · per_row_i`` where rows with ``w_i == 0`` contribute exactly 0 (NaN-safe)."""
    return torch.where(weights > 0, per_row * weights, per_row.new_zeros(())).sum()
