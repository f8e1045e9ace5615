"""The GFL head: shared conv towers, a joint class-quality branch and a distribution branch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bmgkd_core.errors import ConfigError

__all__ = ["DEFAULT_STRIDES", "GFLHead", "GFLHeadOutputs", "Scale", "make_points"]

DEFAULT_STRIDES: tuple[int, ...] = (8, 16, 32, 64, 128)  # P3..P7
# Point of cell (i, j) is (j · stride + offset, i · stride + offset): 0 as in mmdet's
# AnchorGenerator (center_offset=0) used by its GFL/ATSS heads and in torchvision's anchors.
_POINT_OFFSET = 0.0


@dataclass(frozen=True)
class GFLHeadOutputs:
    """Raw per-level outputs of :class:`GFLHead` for a batch of ``B`` images.

    Points are ordered row-major within a level (index ``i * W + j``), levels fine to coarse.

    Attributes:
        cls_logits_per_level: ``[B, H*W, C]`` joint class-quality logits (sigmoid scores).
        reg_logits_per_level: ``[B, H*W, 4 * (reg_max + 1)]`` distribution logits, sides l, t, r, b
            consecutive (already multiplied by the level's learnable scale).
        points_per_level: ``[H*W, 2]`` float32 xy point coordinates in input (transformed) pixels.
        strides: Stride of each level in input pixels.
        sizes_per_level: ``(H, W)`` of each level's feature map.
        reg_max: Largest distance bin; distances are in units of the level's stride.
    """

    cls_logits_per_level: list[Tensor]
    reg_logits_per_level: list[Tensor]
    points_per_level: list[Tensor]
    strides: list[int]
    sizes_per_level: list[tuple[int, int]]
    reg_max: int

    @property
    def num_points_per_level(self) -> list[int]:
        """Number of points ``H * W`` of each level."""
        return [h * w for h, w in self.sizes_per_level]

    def point_strides(self) -> Tensor:
        """``[N]`` float32 stride of every point, levels concatenated."""
        return torch.cat(
            [
                torch.full((p.shape[0],), float(s), device=p.device)
                for p, s in zip(self.points_per_level, self.strides, strict=True)
            ]
        )

    def concat_levels(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Concatenate all levels along the point axis.

        Returns:
            ``cls_logits [B, N, C]``, ``reg_logits [B, N, 4 * (reg_max + 1)]``, ``points [N, 2]``
            and ``point_strides [N]`` (float32), with ``N = sum(num_points_per_level)``.
        """
        return (
            torch.cat(self.cls_logits_per_level, dim=1),
            torch.cat(self.reg_logits_per_level, dim=1),
            torch.cat(self.points_per_level, dim=0),
            self.point_strides(),
        )


class Scale(nn.Module):
    """Multiply the input by one learnable scalar (mmcv's ``Scale``), one instance per level."""

    def __init__(self, init: float = 1.0) -> None:
        """Create the scalar with value ``init``."""
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(init, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x * scale``."""
        return x * self.scale


def make_points(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """``[height * width, 2]`` float32 xy points of one level, row-major."""
    ys = torch.arange(height, dtype=torch.float32, device=device) * stride + _POINT_OFFSET
    xs = torch.arange(width, dtype=torch.float32, device=device) * stride + _POINT_OFFSET
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)


class GFLHead(nn.Module):
    """GFL head shared across FPN levels (mmdet ``GFLHead`` layout and initialisation).

    Two towers of ``num_convs`` × (3×3 conv without bias, GroupNorm, ReLU); a 3×3 conv predicting
    ``num_classes`` joint class-quality logits (bias prior 0.01) and a 3×3 conv predicting
    ``4 * (reg_max + 1)`` distribution logits, scaled by a learnable per-level :class:`Scale`.
    Conv weights are drawn from N(0, 0.01²).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        strides: Sequence[int] = DEFAULT_STRIDES,
        reg_max: int = 16,
        num_convs: int = 4,
        feat_channels: int | None = None,
        norm_groups: int = 32,
        prior_prob: float = 0.01,
    ) -> None:
        """Build the towers and predictors.

        Args:
            in_channels: Channels of every FPN level.
            num_classes: Number of class logits (dataset classes + 1 for background).
            strides: Stride of each level; the head expects exactly ``len(strides)`` maps.
            reg_max: Largest distance bin (17 bins for 16).
            num_convs: Convs per tower.
            feat_channels: Tower width; defaults to ``in_channels``.
            norm_groups: GroupNorm groups.
            prior_prob: Initial foreground probability of every class logit.

        Raises:
            ConfigError: a non-positive size or a width not divisible by ``norm_groups``.
        """
        super().__init__()
        feat_channels = in_channels if feat_channels is None else feat_channels
        if num_classes < 2 or reg_max < 1 or not strides:
            raise ConfigError(
                f"GFLHead needs num_classes >= 2, reg_max >= 1 and strides; got "
                f"num_classes={num_classes}, reg_max={reg_max}, strides={tuple(strides)}"
            )
        if feat_channels % norm_groups != 0:
            raise ConfigError(f"feat_channels={feat_channels} not divisible by {norm_groups}")
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.strides = [int(s) for s in strides]
        self.cls_tower = _make_tower(in_channels, feat_channels, num_convs, norm_groups)
        self.reg_tower = _make_tower(in_channels, feat_channels, num_convs, norm_groups)
        self.cls_logits = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.reg_logits = nn.Conv2d(feat_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        _init_conv(self.cls_logits, bias=-math.log((1 - prior_prob) / prior_prob))
        _init_conv(self.reg_logits, bias=0.0)

    def forward(self, features: Sequence[Tensor]) -> GFLHeadOutputs:
        """Run the head on ``[B, C_in, H_l, W_l]`` maps, one per stride (fine to coarse).

        Raises:
            ConfigError: the number of maps differs from the number of strides.
        """
        if len(features) != len(self.strides):
            raise ConfigError(
                f"GFLHead expects {len(self.strides)} feature maps (strides {self.strides}), "
                f"got {len(features)}"
            )
        cls_per_level, reg_per_level, points_per_level, sizes = [], [], [], []
        for feature, scale, stride in zip(features, self.scales, self.strides, strict=True):
            cls_logits = self.cls_logits(self.cls_tower(feature))  # [B, C, H, W]
            reg_logits = scale(self.reg_logits(self.reg_tower(feature)))  # [B, 4(R+1), H, W]
            height, width = feature.shape[-2:]
            cls_per_level.append(cls_logits.flatten(2).transpose(1, 2))  # [B, HW, C]
            reg_per_level.append(reg_logits.flatten(2).transpose(1, 2))  # [B, HW, 4(R+1)]
            points_per_level.append(make_points(height, width, stride, feature.device))
            sizes.append((int(height), int(width)))
        return GFLHeadOutputs(
            cls_logits_per_level=cls_per_level,
            reg_logits_per_level=reg_per_level,
            points_per_level=points_per_level,
            strides=list(self.strides),
            sizes_per_level=sizes,
            reg_max=self.reg_max,
        )


def _make_tower(in_channels: int, channels: int, num_convs: int, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(num_convs):
        conv = nn.Conv2d(
            in_channels if index == 0 else channels, channels, 3, padding=1, bias=False
        )
        nn.init.normal_(conv.weight, std=0.01)
        layers += [conv, nn.GroupNorm(groups, channels), nn.ReLU()]
    return nn.Sequential(*layers)


def _init_conv(conv: nn.Conv2d, bias: float) -> None:
    nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, bias)
