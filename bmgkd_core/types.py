"""Shared type aliases for the detector contract (torchvision style).

Boxes are ``xyxy`` in absolute input-image pixels unless a name says otherwise.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, TypeAlias, TypedDict

if TYPE_CHECKING:
    from torch import Tensor
else:  # keep this module importable without torch
    Tensor = "torch.Tensor"

__all__ = ["Detection", "FeatureMaps", "LossDict", "Target"]


class Target(TypedDict, total=False):
    """One image's ground truth, as torchvision's detectors take it.

    ``boxes``: float32 ``[N, 4]`` xyxy absolute pixels; ``labels``: int64 ``[N]`` in ``1..K``
    (0 is background); ``image_id``: the dataset's image id; ``orig_size``: ``(height, width)``
    of the image as stored on disk (after EXIF orientation).
    """

    boxes: Tensor
    labels: Tensor
    image_id: int
    orig_size: tuple[int, int]


class Detection(TypedDict):
    """One image's detections: ``boxes`` ``[M, 4]`` xyxy, ``scores`` ``[M]``, ``labels`` ``[M]``."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


LossDict: TypeAlias = "dict[str, Tensor]"
FeatureMaps: TypeAlias = "OrderedDict[str, Tensor]"
