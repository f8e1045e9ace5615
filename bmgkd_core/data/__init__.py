"""Datasets (COCO JSON and Pascal VOC), validation, transforms and loaders.

``load_dataset(root, split)`` returns a :class:`DetectionDataset` of ``(image, target)`` pairs in
torchvision's detection format; ``validate_dataset(root)`` reports every problem of every split;
``build_transforms`` and ``build_loader`` prepare reproducible, resumable training batches.

The names are exported lazily (PEP 562) so that ``import bmgkd_core.data`` and
``from bmgkd_core.data import validate_dataset`` never load torch: the API process validates
uploads with the validator, which is torch-free.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

_EXPORTS: dict[str, str] = {
    "DetectionDataset": "bmgkd_core.data.dataset",
    "EpochSampler": "bmgkd_core.data.loader",
    "ImageRecord": "bmgkd_core.data.records",
    "LabelMap": "bmgkd_core.data.records",
    "SeededDataset": "bmgkd_core.data.loader",
    "ValidationIssue": "bmgkd_core.data.validate",
    "ValidationReport": "bmgkd_core.data.validate",
    "build_loader": "bmgkd_core.data.loader",
    "build_transforms": "bmgkd_core.data.transforms",
    "collate_fn": "bmgkd_core.data.loader",
    "detect_format": "bmgkd_core.data.records",
    "load_dataset": "bmgkd_core.data.dataset",
    "load_image": "bmgkd_core.data.dataset",
    "validate_dataset": "bmgkd_core.data.validate",
}

if TYPE_CHECKING:
    from bmgkd_core.data.dataset import DetectionDataset, load_dataset, load_image
    from bmgkd_core.data.loader import EpochSampler, SeededDataset, build_loader, collate_fn
    from bmgkd_core.data.records import ImageRecord, LabelMap, detect_format
    from bmgkd_core.data.transforms import build_transforms
    from bmgkd_core.data.validate import ValidationIssue, ValidationReport, validate_dataset


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'bmgkd_core.data' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
