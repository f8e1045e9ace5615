"""The predictions viewer's data (torch-free): a job's COCO results files against a dataset split.

A split is parsed with the engine's torch-free parsers (``bmgkd_core.data.coco``/``voc``) and
the results files (``predictions_val.json``, ``teacher_predictions_val.json``: lists of
``{image_id, category_id, bbox [x, y, w, h], score}``) are grouped per image, their category ids
mapped back to class names through the split's label map. Both are kept in small in-process LRU
caches, so paging through the viewer re-parses nothing.

A *miss* is a ground-truth box (crowd / difficult ones excepted) that a teacher box finds and no
student box finds; a box finds it when it has the same class, a score of at least
:data:`MATCH_SCORE` and an IoU of at least :data:`MATCH_IOU` with it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from bmgkd_core.data.coco import parse_coco_split
from bmgkd_core.data.records import LabelMap
from bmgkd_core.data.validate import IssueSink, ParsedSplit
from bmgkd_core.data.voc import parse_voc_split

__all__ = [
    "IMAGE_DIRS",
    "MATCH_IOU",
    "MATCH_SCORE",
    "Detections",
    "ImageView",
    "LruCache",
    "PredictionSet",
    "build_prediction_set",
    "count_misses",
    "load_split",
    "read_results",
]

log = logging.getLogger(__name__)

IMAGE_DIRS = ("images", "JPEGImages")  # COCO, VOC: the only folders the images route serves
MATCH_SCORE = 0.5
MATCH_IOU = 0.5

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A small thread-safe least-recently-used cache (the API's routes run in a thread pool)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_build(self, key: K, build: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = build()  # outside the lock: two racing builds are harmless, one wins
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def load_split(root: Path, fmt: str, split: str) -> ParsedSplit:
    """Parse ``split`` of the dataset at ``root`` (validated at upload; issues are ignored)."""
    sink = IssueSink(strict=False, root=root)
    if fmt == "voc":
        return parse_voc_split(root, split, sink)
    return parse_coco_split(root, split, sink)


@dataclass(frozen=True)
class Detections:
    """One image's boxes, best score first.

    Attributes:
        boxes: float32 ``[M, 4]`` xyxy absolute pixels.
        scores: float32 ``[M]``, descending.
        labels: int64 ``[M]`` in ``1..K`` (the split's labels).
    """

    boxes: NDArray[np.float32]
    scores: NDArray[np.float32]
    labels: NDArray[np.int64]

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        )

    def confident(self, min_score: float) -> Detections:
        keep = self.scores >= min_score
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])


_NO_DETECTIONS = Detections.empty()


def _parse_result(raw: Any, cat_to_label: dict[int, int]) -> tuple[int, list[float], int] | None:
    """``(image_id, [x1, y1, x2, y2, score], label)`` of one COCO result, or None if unusable."""
    if not isinstance(raw, dict):
        return None
    try:
        image_id, category_id = int(raw["image_id"]), int(raw["category_id"])
        x, y, w, h = (float(v) for v in raw["bbox"])
        score = float(raw["score"])
    except (KeyError, TypeError, ValueError):
        return None
    label = cat_to_label.get(category_id)
    if label is None or not all(math.isfinite(v) for v in (x, y, w, h, score)):
        return None
    return image_id, [x, y, x + w, y + h, score], label


def read_results(path: Path | None, label_map: LabelMap) -> dict[int, Detections]:
    """A COCO results file grouped per image id; a missing or unreadable file gives ``{}``.

    Entries that are malformed, non-finite or of a category the split does not have are skipped.
    """
    if path is None or not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read predictions %s: %s", path, exc)
        return {}
    if not isinstance(raw, list):
        log.warning("predictions %s: not a list of results", path)
        return {}
    cat_to_label = {cid: i + 1 for i, cid in enumerate(label_map.category_ids)}
    grouped: dict[int, tuple[list[list[float]], list[int]]] = {}
    skipped = 0
    for item in raw:
        parsed = _parse_result(item, cat_to_label)
        if parsed is None:
            skipped += 1
            continue
        rows, labels = grouped.setdefault(parsed[0], ([], []))
        rows.append(parsed[1])
        labels.append(parsed[2])
    if skipped:
        log.warning("predictions %s: skipped %d unusable entries", path, skipped)
    out = {}
    for image_id, (rows, labels) in grouped.items():
        arr = np.asarray(rows, dtype=np.float32).reshape(-1, 5)
        order = np.argsort(-arr[:, 4], kind="stable")
        out[image_id] = Detections(
            arr[order, :4], arr[order, 4], np.asarray(labels, dtype=np.int64)[order]
        )
    return out


def _iou(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """IoU of xyxy boxes ``a`` [N, 4] and ``b`` [M, 4] -> [N, M]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # [N, M, 2]
    inter = np.clip(rb - lt, 0, None).prod(axis=2)  # [N, M]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])  # [N]
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # [M]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def _found(
    gt_boxes: NDArray[np.float32], gt_labels: NDArray[np.int64], det: Detections
) -> NDArray[np.bool_]:
    """Which ground-truth boxes ``det`` finds (same class, score and IoU thresholds) -> [G]."""
    det = det.confident(MATCH_SCORE)
    if len(gt_boxes) == 0 or len(det.scores) == 0:
        return np.zeros(len(gt_boxes), dtype=bool)
    hit = _iou(gt_boxes, det.boxes) >= MATCH_IOU  # [G, D]
    hit &= gt_labels[:, None] == det.labels[None, :]
    return np.asarray(hit.any(axis=1))


def count_misses(
    gt_boxes: NDArray[np.float32],
    gt_labels: NDArray[np.int64],
    teacher: Detections,
    student: Detections,
) -> int:
    """Ground-truth boxes the teacher finds and the student does not (see the module doc)."""
    found_by_teacher = _found(gt_boxes, gt_labels, teacher)
    found_by_student = _found(gt_boxes, gt_labels, student)
    return int((found_by_teacher & ~found_by_student).sum())


@dataclass(frozen=True)
class ImageView:
    """One image of the viewer: its ground truth and both models' detections."""

    image_id: int
    file_name: str
    rel_path: str  # relative to the dataset root, e.g. ``images/img_000.jpg``
    width: int
    height: int
    gt_boxes: NDArray[np.float32]  # [G, 4] xyxy, crowd / difficult boxes included
    gt_labels: NDArray[np.int64]  # [G] in 1..K
    student: Detections
    teacher: Detections
    misses: int


@dataclass(frozen=True)
class PredictionSet:
    """A job's viewer data: every image of the split, in both sort orders."""

    class_names: tuple[str, ...]
    images: list[ImageView]
    by_misses: list[int]
    by_name: list[int]

    def page(
        self, sort: Literal["misses", "name"], offset: int, limit: int, min_score: float
    ) -> list[dict[str, Any]]:
        order = self.by_misses if sort == "misses" else self.by_name
        return [self._item(self.images[i], min_score) for i in order[offset : offset + limit]]

    def _item(self, view: ImageView, min_score: float) -> dict[str, Any]:
        names = self.class_names
        gt = [
            [*(round(v, 2) for v in box), names[label - 1]]
            for box, label in zip(view.gt_boxes.tolist(), view.gt_labels.tolist(), strict=True)
        ]
        return {
            "image_id": view.image_id,
            "file_name": view.file_name,
            "rel_path": view.rel_path,
            "width": view.width,
            "height": view.height,
            "gt": gt,
            "student": self._boxes(view.student.confident(min_score)),
            "teacher": self._boxes(view.teacher.confident(min_score)),
            "misses": view.misses,
        }

    def _boxes(self, det: Detections) -> list[list[Any]]:
        return [
            [*(round(v, 2) for v in box), round(score, 4), self.class_names[label - 1]]
            for box, score, label in zip(
                det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True
            )
        ]


def _rel_path(path: Path, root: Path, file_name: str, fmt: str) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return f"{'JPEGImages' if fmt == 'voc' else 'images'}/{file_name}"


def build_prediction_set(
    parsed: ParsedSplit,
    root: Path,
    fmt: str,
    student: dict[int, Detections],
    teacher: dict[int, Detections],
) -> PredictionSet:
    """Pair every image of ``parsed`` with its detections and count its misses."""
    views = []
    for rec in parsed.records:
        gt_boxes = np.asarray(rec.boxes, dtype=np.float32).reshape(-1, 4)
        gt_labels = np.asarray(rec.labels, dtype=np.int64)
        crowd = np.asarray(rec.iscrowd, dtype=bool)
        s = student.get(rec.image_id, _NO_DETECTIONS)
        t = teacher.get(rec.image_id, _NO_DETECTIONS)
        views.append(
            ImageView(
                image_id=rec.image_id,
                file_name=rec.file_name,
                rel_path=_rel_path(rec.path, root, rec.file_name, fmt),
                width=rec.width,
                height=rec.height,
                gt_boxes=gt_boxes,
                gt_labels=gt_labels,
                student=s,
                teacher=t,
                misses=count_misses(gt_boxes[~crowd], gt_labels[~crowd], t, s),
            )
        )
    by_name = sorted(range(len(views)), key=lambda i: (views[i].file_name, views[i].image_id))
    by_misses = sorted(by_name, key=lambda i: -views[i].misses)  # stable: ties by name
    return PredictionSet(tuple(parsed.label_map.names), views, by_misses, by_name)
