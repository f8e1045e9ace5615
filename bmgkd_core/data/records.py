"""Torch-free dataset records: what the COCO and VOC parsers produce and the validator checks.

This module (and the parsers and validator built on it) imports numpy and PIL but never torch or
torchvision, so a process that must not load torch (the API) can validate datasets.

A split is parsed into :class:`ImageRecord` objects whose arrays are numpy arrays
(:data:`ArrayRecord`); :func:`~bmgkd_core.data.dataset.load_dataset` turns them into tensors
(``ImageRecord[Tensor]``) for :class:`~bmgkd_core.data.dataset.DetectionDataset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeAlias, TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from bmgkd_core.errors import DataError

__all__ = [
    "ArrayRecord",
    "DatasetFormat",
    "ImageRecord",
    "LabelMap",
    "detect_format",
    "make_array_record",
    "read_image_size",
]

DatasetFormat = Literal["coco", "voc"]

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # 90 degree turns: width and height swap

ArrayT = TypeVar("ArrayT")


@dataclass(frozen=True, eq=False)
class ImageRecord(Generic[ArrayT]):
    """One image of a split and its annotations.

    The arrays are numpy arrays as parsed (:data:`ArrayRecord`, torch-free) and torch tensors in
    the records of a loaded :class:`~bmgkd_core.data.dataset.DetectionDataset`
    (``ImageRecord[Tensor]``), with the same shapes and dtypes.

    Attributes:
        image_id: Integer id, unique within the dataset.
        file_name: Path relative to the image folder (``images/`` or ``JPEGImages/``).
        path: Absolute path of the image file.
        width: Image width in pixels as declared (after EXIF orientation).
        height: Image height in pixels as declared (after EXIF orientation).
        boxes: float32 ``[N, 4]`` xyxy absolute pixels, clipped to the image.
        labels: int64 ``[N]`` in ``1..K``.
        iscrowd: bool ``[N]``; COCO ``iscrowd=1`` or VOC ``difficult=1`` (ignored in training).
        areas: float32 ``[N]``; the source's ``area`` (COCO) or the box area.
    """

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    boxes: ArrayT
    labels: ArrayT
    iscrowd: ArrayT
    areas: ArrayT


ArrayRecord: TypeAlias = ImageRecord[NDArray[Any]]
"""An :class:`ImageRecord` holding numpy arrays, as the parsers return it."""


@dataclass(frozen=True)
class LabelMap:
    """Class names in label order; labels are ``1..K`` and 0 is background.

    Attributes:
        names: ``names[label - 1]`` is the class name of ``label``.
        category_ids: ``category_ids[label - 1]`` is the source category id of ``label`` (the
            original COCO id; for VOC equal to the label).
    """

    names: tuple[str, ...]
    category_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        """Check that names and category ids pair up."""
        if len(self.names) != len(self.category_ids):
            raise DataError(
                f"LabelMap: {len(self.names)} names but {len(self.category_ids)} category ids"
            )

    @property
    def num_classes(self) -> int:
        """Number of object classes ``K`` (without background)."""
        return len(self.names)

    def label_of(self, category_id: int) -> int:
        """Return the label ``1..K`` of a source category id.

        Raises:
            DataError: ``category_id`` is unknown.
        """
        try:
            return self.category_ids.index(category_id) + 1
        except ValueError:
            raise DataError(
                f"unknown category id {category_id}; known: {list(self.category_ids)}"
            ) from None

    def to_dict(self) -> dict[str, list[Any]]:
        """Return ``{"names": [...], "category_ids": [...]}`` (JSON-able)."""
        return {"names": list(self.names), "category_ids": list(self.category_ids)}


def make_array_record(
    image_id: int,
    file_name: str,
    path: Path,
    size: tuple[int, int],
    objects: Sequence[tuple[list[float], int, bool, float]],
) -> ArrayRecord:
    """Build a numpy :class:`ImageRecord` from ``(xyxy, label, iscrowd, area)`` tuples."""
    return ImageRecord(
        image_id=image_id,
        file_name=file_name,
        path=path,
        width=size[0],
        height=size[1],
        boxes=np.asarray([o[0] for o in objects], dtype=np.float32).reshape(-1, 4),
        labels=np.asarray([o[1] for o in objects], dtype=np.int64),
        iscrowd=np.asarray([o[2] for o in objects], dtype=np.bool_),
        areas=np.asarray([o[3] for o in objects], dtype=np.float32),
    )


def read_image_size(path: Path) -> tuple[int, int]:
    """Read ``(width, height)`` from the image header, after EXIF orientation.

    Only the header is read (PIL ``verify()``), not the pixels.

    Raises:
        DataError: the file is missing or is not a readable image.
    """
    try:
        with Image.open(path) as pil:
            width, height = pil.size
            orientation = pil.getexif().get(_EXIF_ORIENTATION, 1)
            pil.verify()
    except FileNotFoundError as exc:
        raise DataError(f"image file not found: {path}") from exc
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return width, height


def detect_format(root: Path) -> DatasetFormat:
    """Detect the layout of a dataset root.

    COCO: ``<root>/images/`` and ``<root>/annotations/*.json``. Pascal VOC:
    ``<root>/JPEGImages/``, ``<root>/Annotations/`` and ``<root>/ImageSets/Main/``.

    Raises:
        DataError: the root is missing, matches neither layout, or matches both.
    """
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a directory")
    is_coco = (root / "images").is_dir() and any((root / "annotations").glob("*.json"))
    is_voc = all((root / d).is_dir() for d in ("JPEGImages", "Annotations", "ImageSets/Main"))
    if is_coco and is_voc:
        raise DataError(f"{root} looks like both COCO and VOC; pass format='coco' or 'voc'")
    if is_coco:
        return "coco"
    if is_voc:
        return "voc"
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:20]
    raise DataError(
        f"cannot detect the dataset layout of {root}: expected COCO (images/ and "
        "annotations/{train,val}.json) or Pascal VOC (JPEGImages/, Annotations/*.xml and "
        f"ImageSets/Main/{{train,val}}.txt); found {found}"
    )


def unsafe_relative_path(name: str) -> str | None:
    """Why ``name`` may not be used as a path inside the dataset, or ``None`` when it is fine.

    Annotation files name their images; a name that is absolute or climbs out with ``..`` would
    let an uploaded dataset read (or probe for) files elsewhere on the server.
    """
    if "\x00" in name:
        return "contains a NUL byte"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "climbs out of the dataset with '..'"
    return None
