"""The dataset API shared by the COCO and Pascal VOC layouts.

A split is parsed once into :class:`ImageRecord` objects (boxes ``xyxy`` absolute pixels of the
image as stored on disk after EXIF orientation) and a :class:`LabelMap`. :class:`DetectionDataset`
decodes images lazily and returns ``(image, target)`` pairs in torchvision's detection format.

The torch-free parts (records, label map, layout detection, image headers) live in
:mod:`bmgkd_core.data.records` and are re-exported here; the parsers and the validator use only
those, so validating a dataset does not load torch.

:func:`load_dataset` raises :class:`~bmgkd_core.errors.DataError` on the first structural problem
of a split and repairs the rest (boxes are clipped to the image; boxes with no area are dropped);
:func:`~bmgkd_core.data.validate.validate_dataset` lists every problem.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from bmgkd_core.data import coco, voc
from bmgkd_core.data.records import (
    DatasetFormat,
    ImageRecord,
    LabelMap,
    detect_format,
    make_array_record,
    read_image_size,
)
from bmgkd_core.data.validate import IssueSink
from bmgkd_core.errors import DataError

__all__ = [
    "DatasetFormat",
    "DetectionDataset",
    "ImageRecord",
    "LabelMap",
    "PairTransform",
    "detect_format",
    "load_dataset",
    "load_image",
    "make_record",
    "read_image_size",
    "to_tensor_record",
]

logger = logging.getLogger(__name__)

PairTransform = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]
"""``(image, target) -> (image, target)``, as returned by ``build_transforms``."""

_TV_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


def make_record(
    image_id: int,
    file_name: str,
    path: Path,
    size: tuple[int, int],
    objects: Sequence[tuple[list[float], int, bool, float]],
) -> ImageRecord[Tensor]:
    """Build an :class:`ImageRecord` of tensors from ``(xyxy, label, iscrowd, area)`` tuples."""
    return to_tensor_record(make_array_record(image_id, file_name, path, size, objects))


def to_tensor_record(record: ImageRecord[Any]) -> ImageRecord[Tensor]:
    """Return ``record`` with its numpy arrays as tensors of the same dtypes.

    A record that already holds tensors is returned as is.
    """
    fields = (record.boxes, record.labels, record.iscrowd, record.areas)
    if all(isinstance(a, Tensor) for a in fields):
        return record
    boxes, labels, iscrowd, areas = (torch.from_numpy(np.asarray(a)) for a in fields)
    return ImageRecord(
        image_id=record.image_id,
        file_name=record.file_name,
        path=record.path,
        width=record.width,
        height=record.height,
        boxes=boxes,
        labels=labels,
        iscrowd=iscrowd,
        areas=areas,
    )


def load_image(path: Path) -> Tensor:
    """Decode an image file to RGB with its EXIF orientation applied.

    Grayscale, palette and RGBA images are converted to RGB. JPEG and PNG are decoded by
    ``torchvision.io``; other formats, and files it cannot decode, go through PIL.

    Returns:
        uint8 tensor ``[3, H, W]``.

    Raises:
        DataError: the file is missing or cannot be decoded.
    """
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    if path.suffix.lower() in _TV_SUFFIXES:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        try:
            with warnings.catch_warnings():  # torchvision >= 0.29 flags its decoders as deprecated
                warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
                image: Tensor = decode_image(
                    data, mode=ImageReadMode.RGB, apply_exif_orientation=True
                )
        except RuntimeError:
            logger.debug("torchvision could not decode %s; trying PIL", path)
        else:
            if image.dtype != torch.uint8:  # 16-bit PNG
                image = TF.to_dtype(image, torch.uint8, scale=True)
            return image
    try:
        with Image.open(path) as pil:
            rgb = ImageOps.exif_transpose(pil).convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc
    pixels: Tensor = TF.pil_to_tensor(rgb)
    return pixels


class DetectionDataset(Dataset[tuple[Tensor, dict[str, Any]]]):
    """A detection split in torchvision's format.

    ``dataset[i]`` returns ``(image, target)``: ``image`` is float32 ``[3, H, W]`` in ``[0, 1]``
    and ``target`` has ``boxes`` (float32 ``[N, 4]`` xyxy absolute pixels), ``labels`` (int64
    ``[N]`` in ``1..K``), ``image_id`` (int) and ``orig_size`` (``(height, width)`` of the image
    on disk after EXIF orientation). Crowd (COCO) and difficult (VOC) boxes are left out of the
    target; they are kept in :meth:`to_coco_gt` as ignore regions. Images without boxes give
    ``boxes`` of shape ``[0, 4]``.

    Args:
        records: The images of the split; numpy records are converted with
            :func:`to_tensor_record`.
        label_map: Class names and source category ids.
        transforms: Optional ``(image, target) -> (image, target)`` applied to a
            ``tv_tensors.Image`` (uint8) and a target whose ``boxes`` are
            ``tv_tensors.BoundingBoxes``; see ``build_transforms``.
        root: Dataset root (for messages).
        split: Split name (for messages).
        format: Source layout.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord[Any]],
        label_map: LabelMap,
        *,
        transforms: PairTransform | None = None,
        root: Path | None = None,
        split: str = "",
        format: DatasetFormat = "coco",
    ) -> None:
        """Create the dataset; see the class docstring for the arguments."""
        self.records: list[ImageRecord[Tensor]] = [to_tensor_record(r) for r in records]
        self.label_map = label_map
        self.transforms = transforms
        self.root = root
        self.split = split
        self.format = format

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        """Return ``(image, target)`` of image ``index``; see the class docstring."""
        record = self.records[index]
        image = load_image(record.path)
        height, width = int(image.shape[-2]), int(image.shape[-1])
        if (width, height) != (record.width, record.height):
            raise DataError(
                f"{record.path}: image is {width}x{height} after EXIF orientation but the "
                f"annotations declare {record.width}x{record.height} (image_id={record.image_id})"
            )
        keep = ~record.iscrowd
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(
                record.boxes[keep].clone(), format="XYXY", canvas_size=(height, width)
            ),
            "labels": record.labels[keep].clone(),
            "image_id": record.image_id,
            "orig_size": (height, width),
        }
        out_image: Any = tv_tensors.Image(image)
        if self.transforms is not None:
            out_image, target = self.transforms(out_image, target)
        return _to_plain(out_image), _plain_target(target)

    def to_coco_gt(self) -> dict[str, Any]:
        """Return a COCO ground-truth dict of this split for the evaluator.

        Category ids are the source ids (``label_map.category_ids``); ``iscrowd`` (VOC:
        ``difficult``) and ``area`` are kept; boxes are ``[x, y, w, h]`` in pixels of the image
        on disk; annotation ids are renumbered ``1..M``.
        """
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        cat_ids = self.label_map.category_ids
        for record in self.records:
            images.append(
                {
                    "id": record.image_id,
                    "file_name": record.file_name,
                    "width": record.width,
                    "height": record.height,
                }
            )
            xywh = record.boxes.clone()
            xywh[:, 2:] -= xywh[:, :2]
            rows = zip(
                xywh.tolist(),
                record.labels.tolist(),
                record.iscrowd.tolist(),
                record.areas.tolist(),
                strict=True,
            )
            for box, label, crowd, area in rows:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": record.image_id,
                        "category_id": cat_ids[label - 1],
                        "bbox": box,
                        "area": area,
                        "iscrowd": int(crowd),
                    }
                )
        categories = [
            {"id": cat_id, "name": name}
            for cat_id, name in zip(cat_ids, self.label_map.names, strict=True)
        ]
        return {"images": images, "annotations": annotations, "categories": categories}


def _to_plain(image: Any) -> Tensor:
    """Unwrap a tv_tensor and make sure the image is float32 in [0, 1]."""
    if not isinstance(image, Tensor):
        raise DataError(f"transforms must return a tensor image, got {type(image).__name__}")
    plain = image.as_subclass(Tensor)
    if plain.dtype != torch.float32:
        plain = TF.to_dtype(plain, torch.float32, scale=True)
    return plain


def _plain_target(target: dict[str, Any]) -> dict[str, Any]:
    out = dict(target)
    out["boxes"] = torch.as_tensor(target["boxes"]).as_subclass(Tensor).to(torch.float32)
    out["labels"] = torch.as_tensor(target["labels"]).as_subclass(Tensor).to(torch.int64)
    return out


def load_dataset(
    root: str | Path,
    split: str,
    *,
    format: Literal["auto", "coco", "voc"] = "auto",
    transforms: PairTransform | None = None,
) -> DetectionDataset:
    """Load one split of a COCO or Pascal VOC dataset.

    Structural problems (unreadable files, missing keys, unknown ids, missing images) raise at
    once. Boxes are clipped to the image and boxes without area are dropped, with one logged
    warning; :func:`~bmgkd_core.data.validate.validate_dataset` lists every problem.

    Args:
        root: Dataset root folder.
        split: Split name, e.g. ``"train"`` (``annotations/train.json`` or
            ``ImageSets/Main/train.txt``).
        format: ``"coco"``, ``"voc"`` or ``"auto"`` (detected from the layout).
        transforms: Optional paired transform, see :class:`DetectionDataset`.

    Returns:
        The split as a :class:`DetectionDataset`.

    Raises:
        DataError: the layout is not recognised, the split is missing, or an annotation file is
            invalid; the message names the file and the record.
    """
    root_path = Path(root).expanduser().resolve()
    fmt: DatasetFormat = detect_format(root_path) if format == "auto" else format
    if fmt not in ("coco", "voc"):
        raise DataError(f"unknown dataset format {fmt!r}; expected 'auto', 'coco' or 'voc'")
    sink = IssueSink(strict=True, root=root_path)
    if fmt == "coco":
        parsed = coco.parse_coco_split(root_path, split, sink)
    else:
        parsed = voc.parse_voc_split(root_path, split, sink)
    sink.log_summary(f"{root_path} [{split}]")
    return DetectionDataset(
        parsed.records,
        parsed.label_map,
        transforms=transforms,
        root=root_path,
        split=split,
        format=fmt,
    )
