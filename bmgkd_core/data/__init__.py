"""Datasets (COCO JSON and Pascal VOC), validation, transforms and loaders.

``load_dataset(root, split)`` returns a :class:`DetectionDataset` of ``(image, target)`` pairs in
torchvision's detection format; ``validate_dataset(root)`` reports every problem of every split;
``build_transforms`` and ``build_loader`` prepare reproducible, resumable training batches.
"""

from bmgkd_core.data.dataset import (
    DetectionDataset,
    ImageRecord,
    LabelMap,
    detect_format,
    load_dataset,
    load_image,
)
from bmgkd_core.data.loader import EpochSampler, SeededDataset, build_loader, collate_fn
from bmgkd_core.data.transforms import build_transforms
from bmgkd_core.data.validate import ValidationIssue, ValidationReport, validate_dataset

__all__ = [
    "DetectionDataset",
    "EpochSampler",
    "ImageRecord",
    "LabelMap",
    "SeededDataset",
    "ValidationIssue",
    "ValidationReport",
    "build_loader",
    "build_transforms",
    "collate_fn",
    "detect_format",
    "load_dataset",
    "load_image",
    "validate_dataset",
]
