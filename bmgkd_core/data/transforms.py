"""Paired image/target transforms built on ``torchvision.transforms.v2``.

A transform takes ``(image, target)`` where ``image`` is a ``tv_tensors.Image`` (uint8
``[3, H, W]``) and ``target["boxes"]`` is a ``tv_tensors.BoundingBoxes`` (xyxy absolute pixels),
and returns new objects: inputs are never modified. Randomness comes only from torch's global
generator, so the loader can make it reproducible per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from bmgkd_core.data.dataset import PairTransform
from bmgkd_core.errors import ConfigError

__all__ = ["build_transforms"]


def build_transforms(
    *,
    train: bool,
    image_size: int,
    multi_scale: Sequence[int] = (),
    hflip_prob: float = 0.5,
) -> PairTransform:
    """Build the transform of a split.

    Train: aspect-preserving resize so that the longer side equals ``image_size`` (or a size
    drawn uniformly from ``(image_size, *multi_scale)``), random horizontal flip with probability
    ``hflip_prob``, boxes follow; boxes under 1 px after resizing are dropped with their labels;
    the image becomes float32 in ``[0, 1]``.

    Eval: the image only becomes float32 in ``[0, 1]``; no resize, because the detector's own
    transform resizes and maps its boxes back to the input size.

    Args:
        train: Build the training (random) or the evaluation (deterministic) transform.
        image_size: Longer image side after the training resize.
        multi_scale: Extra longer-side sizes to draw from in training.
        hflip_prob: Probability of a horizontal flip in training.

    Returns:
        A callable ``(image, target) -> (image, target)``.

    Raises:
        ConfigError: a size is not positive or ``hflip_prob`` is outside ``[0, 1]``.
    """
    sizes = list(dict.fromkeys((image_size, *multi_scale)))  # unique, order kept
    bad = [s for s in sizes if not isinstance(s, int) or s < 1]
    if bad:
        raise ConfigError(f"image sizes must be positive integers, got {bad}")
    if not 0.0 <= hflip_prob <= 1.0:
        raise ConfigError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
    to_float = v2.ToDtype(torch.float32, scale=True)  # a plain dtype converts images only
    if not train:
        transform: PairTransform = v2.Compose([to_float])
        return transform
    resizes = [v2.Resize(size=None, max_size=s, antialias=True) for s in sizes]
    steps: list[v2.Transform] = [resizes[0] if len(resizes) == 1 else v2.RandomChoice(resizes)]
    if hflip_prob > 0.0:
        steps.append(v2.RandomHorizontalFlip(p=hflip_prob))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0), to_float]
    transform = v2.Compose(steps)
    return transform
