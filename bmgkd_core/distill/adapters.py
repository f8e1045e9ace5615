"""Student→teacher feature adapters ``φ_l`` (spec §1) and the FPN level probe that sizes them.

With the bmgkd builders every FPN is 256 channels wide and student/teacher strides match, so
every adapter is the identity. A custom student backbone may differ: a level whose channel count
differs gets a ``Conv2d(C_s, C_t, 1)`` (Kaiming init, trained with the student, dropped at
inference), and a level whose spatial size differs is resized bilinearly to the teacher's size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmgkd_core.errors import ConfigError

__all__ = ["FeatureAdapter", "LevelPair", "build_adapters", "pair_levels", "probe_levels"]


@dataclass(frozen=True)
class LevelPair:
    """Shapes of one distilled FPN level for the student and the teacher.

    Attributes:
        level: Index among the FPN outputs (0 = finest).
        name: Key of the level in the backbone's ordered dict (e.g. ``"0"``, ``"p6"``).
        student_shape: ``(B, C, H, W)`` of the student map.
        teacher_shape: ``(B, C, H, W)`` of the teacher map.
    """

    level: int
    name: str
    student_shape: tuple[int, ...]
    teacher_shape: tuple[int, ...]

    @property
    def needs_conv(self) -> bool:
        """The channel counts differ (a 1x1 conv is inserted)."""
        return self.student_shape[1] != self.teacher_shape[1]

    @property
    def needs_resize(self) -> bool:
        """The spatial sizes differ (bilinear resize to the teacher's size)."""
        return self.student_shape[2:] != self.teacher_shape[2:]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, with the adapter that this level gets."""
        return {
            "level": self.level,
            "name": self.name,
            "student_shape": list(self.student_shape),
            "teacher_shape": list(self.teacher_shape),
            "adapter": describe_adapter(self),
        }


def describe_adapter(pair: LevelPair) -> str:
    """``"identity"``, ``"conv1x1 128->256"``, ``"resize"`` or both joined with ``" + "``."""
    parts = []
    if pair.needs_conv:
        parts.append(f"conv1x1 {pair.student_shape[1]}->{pair.teacher_shape[1]}")
    if pair.needs_resize:
        (sh, sw), (th, tw) = pair.student_shape[2:], pair.teacher_shape[2:]
        parts.append(f"resize {sh}x{sw}->{th}x{tw}")
    return " + ".join(parts) or "identity"


class FeatureAdapter(nn.Module):
    """``φ_l``: optional ``Conv2d(C_s, C_t, 1)``, then a bilinear resize to the teacher's size.

    Without a conv (equal widths) the module has no parameters; the resize is decided per call
    from the teacher's spatial size, so it also covers input sizes other than the probed one.

    Args:
        student_channels: ``C_s``.
        teacher_channels: ``C_t``.
    """

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.proj: nn.Conv2d | None = None
        if student_channels != teacher_channels:
            proj = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
            nn.init.kaiming_normal_(proj.weight, mode="fan_out", nonlinearity="relu")
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
            self.proj = proj

    def forward(self, student_feats: Tensor, teacher_size: Sequence[int]) -> Tensor:
        """Map ``[B, C_s, H_s, W_s]`` student features to ``[B, C_t, H_t, W_t]``.

        Args:
            student_feats: One student FPN map; gradients flow through.
            teacher_size: ``(H_t, W_t)`` of the teacher's map at this level.

        Returns:
            The adapted student features (the input itself for an identity adapter).
        """
        feats = student_feats if self.proj is None else self.proj(student_feats)
        if tuple(feats.shape[-2:]) != tuple(teacher_size):
            feats = F.interpolate(
                feats, size=tuple(teacher_size), mode="bilinear", align_corners=False
            )
        return feats


def pair_levels(
    student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor], levels: int
) -> list[LevelPair]:
    """Pair the first ``levels`` FPN outputs of the student and the teacher by position.

    Raises:
        ConfigError: either backbone has fewer than ``levels`` outputs.
    """
    if min(len(student_feats), len(teacher_feats)) < levels:
        raise ConfigError(
            f"distill.levels={levels} but the student has {len(student_feats)} and the teacher "
            f"{len(teacher_feats)} FPN outputs"
        )
    pairs = []
    items = zip(student_feats.items(), teacher_feats.values(), strict=False)
    for level, ((name, s), t) in enumerate(items):
        if level >= levels:
            break
        pairs.append(LevelPair(level, name, tuple(s.shape), tuple(t.shape)))
    return pairs


@torch.no_grad()
def probe_levels(
    student_backbone: nn.Module,
    teacher_backbone: nn.Module,
    *,
    image_size: int,
    levels: int,
    batch: Tensor | None = None,
) -> list[LevelPair]:
    """Run both backbones once (eval mode, no grad) and pair their first ``levels`` outputs.

    Each module's train/eval flag is restored afterwards, so BatchNorm statistics are untouched.

    Args:
        student_backbone: The student's FPN backbone.
        teacher_backbone: The teacher's FPN backbone.
        image_size: Side of the zero probe image, rounded up to a multiple of 32.
        levels: Number of distilled levels.
        batch: A real ``[B, 3, H, W]`` normalised batch to probe with instead of zeros.

    Returns:
        One :class:`LevelPair` per distilled level.
    """
    param = next(student_backbone.parameters())
    if batch is None:
        side = math.ceil(image_size / 32) * 32
        batch = torch.zeros(1, 3, side, side, device=param.device, dtype=param.dtype)
    modes = [(m, m.training) for b in (student_backbone, teacher_backbone) for m in b.modules()]
    try:
        student_backbone.eval()
        teacher_backbone.eval()
        student_feats = student_backbone(batch)
        teacher_feats = teacher_backbone(batch.to(next(teacher_backbone.parameters()).device))
    finally:
        for module, training in modes:
            module.training = training
    return pair_levels(student_feats, teacher_feats, levels)


def build_adapters(pairs: Sequence[LevelPair]) -> nn.ModuleList:
    """One :class:`FeatureAdapter` per level (identity when the widths match)."""
    return nn.ModuleList(FeatureAdapter(p.student_shape[1], p.teacher_shape[1]) for p in pairs)
