"""Thin adapter over the COCO evaluation backend (faster-coco-eval, else pycocotools).

Everything here works on plain COCO dicts and lists; no torch. The numbers come from the
backend's ``COCOeval`` (``stats`` and the ``precision`` array), never from a hand-written mAP.
Backend prints are captured (``redirect_stdout``) and sent to this module's logger at DEBUG.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from typing import Any, NamedTuple, TypedDict

import numpy as np

from bmgkd_core.errors import DataError

__all__ = ["CocoMetrics", "build_gt_api", "normalize_gt", "run_cocoeval"]

logger = logging.getLogger(__name__)

# Indices of ``COCOeval.stats`` for bbox with the default area ranges and maxDets [1, 10, 100].
_STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class CocoMetrics(TypedDict):
    """COCO bbox metrics in percent (0..100).

    ``None`` means "undefined": the split has no (non-crowd) ground truth for that metric, e.g.
    ``APl`` when no box is larger than 96² px, or a class absent from the split. COCO encodes
    those as ``-1``; we never return ``-1`` or NaN, so the dict is always valid JSON.
    """

    AP: float | None
    AP50: float | None
    AP75: float | None
    APs: float | None
    APm: float | None
    APl: float | None
    per_class: dict[str, float | None]


class _Backend(NamedTuple):
    name: str
    coco_cls: Any
    cocoeval_cls: Any


def _pycocotools_backend() -> _Backend:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return _Backend("pycocotools", COCO, COCOeval)


@cache
def _backend() -> _Backend:
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:  # fallback only; faster-coco-eval is a declared dependency
        return _pycocotools_backend()
    return _Backend("faster_coco_eval", COCO, COCOeval_faster)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Capture the backend's stdout prints and forward them to the logger at DEBUG."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        text = buffer.getvalue().strip()
        if text:
            logger.debug("%s output:\n%s", _backend().name, text)


def _make_api(dataset: dict[str, Any]) -> Any:
    """Build a backend ``COCO`` object from a dict without copying or re-reading it."""
    api = _backend().coco_cls()
    api.dataset = dataset
    with _quiet():
        api.createIndex()
    return api


def normalize_gt(coco_gt: Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of a COCO ground-truth dict, made safe for the backends.

    Fills ``iscrowd`` (0) and ``area`` (bbox w*h) when missing, and renumbers annotation ids
    1..N when any is missing, duplicated or ``<= 0``: pycocotools uses id 0 as "unmatched".

    Raises:
        DataError: If ``images`` or ``categories`` is missing/empty or a bbox is malformed.
    """
    for key in ("images", "categories"):
        if not coco_gt.get(key):
            raise DataError(
                f"COCO ground truth needs a non-empty {key!r} list, got {key} = "
                f"{coco_gt.get(key)!r}"
            )
    gt: dict[str, Any] = {
        "images": copy.deepcopy(list(coco_gt["images"])),
        "categories": copy.deepcopy(list(coco_gt["categories"])),
        "annotations": copy.deepcopy(list(coco_gt.get("annotations", []))),
    }
    anns: list[dict[str, Any]] = gt["annotations"]
    for ann in anns:
        bbox = ann.get("bbox")
        if not isinstance(bbox, Sequence) or len(bbox) != 4:
            raise DataError(f"annotation needs bbox [x, y, w, h], got {ann!r}")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
    ids = [ann.get("id") for ann in anns]
    if any(not isinstance(i, int) or i <= 0 for i in ids) or len(set(ids)) != len(ids):
        for index, ann in enumerate(anns, start=1):
            ann["id"] = index
    return gt


def build_gt_api(gt: dict[str, Any]) -> Any:
    """Index a normalised ground-truth dict (see :func:`normalize_gt`) with the backend."""
    return _make_api(gt)


def _load_results(gt_api: Any, results: list[dict[str, Any]]) -> Any:
    if not results:
        # pycocotools' loadRes indexes anns[0] and crashes on an empty list.
        empty = {
            "images": gt_api.dataset["images"],
            "categories": gt_api.dataset["categories"],
            "annotations": [],
        }
        return _make_api(empty)
    with _quiet():  # loadRes mutates the dicts (adds id/area/segmentation): give it copies
        return gt_api.loadRes([dict(r) for r in results])


def _percent(value: float) -> float | None:
    value = float(value)
    return None if value < 0 or not math.isfinite(value) else value * 100.0


def run_cocoeval(
    gt_api: Any, results: list[dict[str, Any]], cat_names: Mapping[int, str]
) -> CocoMetrics:
    """Run the backend's bbox ``COCOeval`` over all ground-truth images.

    Args:
        gt_api: Backend ``COCO`` object of the ground truth.
        results: COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).
        cat_names: Evaluated category id -> name, in the order of ``per_class``.

    Returns:
        The metrics in percent; undefined ones are ``None``.
    """
    backend = _backend()
    dt_api = _load_results(gt_api, results)
    if backend.name == "faster_coco_eval":
        coco_eval = backend.cocoeval_cls(
            gt_api, dt_api, iouType="bbox", print_function=logger.debug
        )
    else:
        coco_eval = backend.cocoeval_cls(gt_api, dt_api, iouType="bbox")
    params = coco_eval.params
    params.imgIds = sorted(gt_api.getImgIds())
    params.catIds = sorted(cat_names)
    with _quiet():
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()

    stats = [_percent(v) for v in np.asarray(coco_eval.stats)[: len(_STAT_KEYS)]]
    # precision: [T iou, R recall, K category, A area, M maxDets]
    precision = np.asarray(coco_eval.eval["precision"])
    area_all = list(params.areaRngLbl).index("all")
    max_dets = list(params.maxDets).index(100)
    per_class: dict[str, float | None] = {}
    cat_index = {int(c): k for k, c in enumerate(params.catIds)}
    for cat_id, name in cat_names.items():
        values = precision[:, :, cat_index[cat_id], area_all, max_dets]
        valid = values[values > -1]
        per_class[name] = _percent(float(valid.mean())) if valid.size else None
    return CocoMetrics(
        AP=stats[0],
        AP50=stats[1],
        AP75=stats[2],
        APs=stats[3],
        APm=stats[4],
        APl=stats[5],
        per_class=per_class,
    )
