"""COCO bbox evaluation of torchvision-style detections.

:class:`CocoEvaluator` collects detections per image (``process``), converts them to COCO results
(xywh, original category ids) and scores them with faster-coco-eval (pycocotools only when
faster-coco-eval is not installed). :func:`score_predictions` re-scores a predictions file written
by :meth:`CocoEvaluator.write_predictions`; :func:`evaluate_detector` runs a model over a loader.

All metrics are percentages (0..100). A metric with no ground truth behind it (a class absent from
the split, an empty area range) is ``None``, never NaN or COCO's ``-1`` sentinel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bmgkd_core.errors import ConfigError, DataError
from bmgkd_core.eval._coco_backend import CocoMetrics, build_gt_api, normalize_gt, run_cocoeval

__all__ = ["CocoEvaluator", "CocoMetrics", "evaluate_detector", "score_predictions"]

logger = logging.getLogger(__name__)

_BOX_DECIMALS = 2  # 0.01 px: far below any IoU threshold's resolution
_SCORE_DECIMALS = 5

DetectorBatches = Iterable[tuple[Sequence[Tensor], Sequence[Mapping[str, Any]]]]


def _summary(metrics: CocoMetrics) -> str:
    values = {
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "APs": metrics["APs"],
        "APm": metrics["APm"],
        "APl": metrics["APl"],
    }
    return " | ".join(
        f"{key} {'n/a' if value is None else f'{value:.2f}'}" for key, value in values.items()
    )


def _autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class CocoEvaluator:
    """Accumulates detections and computes COCO bbox metrics.

    Evaluation always covers every image of ``coco_gt`` (the COCO convention, and what
    :func:`score_predictions` sees in a predictions file): an image never passed to
    :meth:`process` counts as "nothing detected" and a warning is logged. Passing the same image
    twice replaces its earlier detections. Categories evaluated are exactly those in
    ``label_to_category_id``; other ground-truth categories are ignored.

    Args:
        coco_gt: COCO ground-truth dict (``images``, ``annotations`` with ``bbox`` xywh,
            ``iscrowd``, ``area``; ``categories``) in original image pixels and category ids.
            It is deep-copied; the caller's dict is never modified.
        label_to_category_id: Model label (``1..K``; 0 is background) -> COCO category id.
        class_names: ``class_names[label - 1]`` names label ``label``; keys of ``per_class``.

    Raises:
        ConfigError: If the labels are not exactly ``1..len(class_names)``, two labels share a
            category or a name, or a category id is not in ``coco_gt["categories"]``.
        DataError: If ``coco_gt`` has no images/categories or a malformed annotation.
    """

    def __init__(
        self,
        coco_gt: Mapping[str, Any],
        *,
        label_to_category_id: Mapping[int, int],
        class_names: Sequence[str],
    ) -> None:
        """Validate the label map and index a private copy of the ground truth."""
        gt = normalize_gt(coco_gt)
        self._label_to_cat = _validate_labels(gt, label_to_category_id, class_names)
        self._cat_names = {
            cat: class_names[label - 1] for label, cat in sorted(self._label_to_cat.items())
        }
        self._gt_api = build_gt_api(gt)
        self._image_ids = frozenset(int(img["id"]) for img in gt["images"])
        self._results: dict[int, list[dict[str, Any]]] = {}

    def reset(self) -> None:
        """Forget all processed detections."""
        self._results = {}

    def process(self, image_ids: Sequence[int], detections: Sequence[Mapping[str, Tensor]]) -> None:
        """Add the detections of a batch of images.

        Args:
            image_ids: COCO image id of each image.
            detections: One dict per image: ``boxes`` float ``[M, 4]`` xyxy absolute pixels of the
                original image, ``scores`` ``[M]``, ``labels`` int64 ``[M]`` in ``1..K``. CPU or
                CUDA tensors of any float dtype. Rows with a non-finite box or score are dropped
                with a warning.

        Raises:
            DataError: If the lengths differ, an image id is not in the ground truth, a tensor
                has the wrong shape or a label has no category.
        """
        if len(image_ids) != len(detections):
            raise DataError(
                f"process() got {len(image_ids)} image ids but {len(detections)} detection dicts"
            )
        for image_id, detection in zip(image_ids, detections, strict=True):
            image_id = int(image_id)
            if image_id not in self._image_ids:
                raise DataError(f"image_id {image_id} is not in the COCO ground truth")
            self._results[image_id] = self._to_results(image_id, detection)

    def _to_results(self, image_id: int, detection: Mapping[str, Tensor]) -> list[dict[str, Any]]:
        try:
            boxes = detection["boxes"].detach().to("cpu", torch.float64)  # [M, 4] xyxy
            scores = detection["scores"].detach().to("cpu", torch.float64)  # [M]
            labels = detection["labels"].detach().to("cpu", torch.int64)  # [M]
        except KeyError as err:
            raise DataError(f"detection for image {image_id} lacks {err}") from err
        num = boxes.shape[0] if boxes.ndim else -1
        if boxes.shape != (num, 4) or scores.shape != (num,) or labels.shape != (num,):
            raise DataError(
                f"image {image_id}: expected boxes [M, 4], scores [M], labels [M], got "
                f"{tuple(boxes.shape)}, {tuple(scores.shape)}, {tuple(labels.shape)}"
            )
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if not bool(finite.all()):
            logger.warning(
                "image %d: dropped %d non-finite detections", image_id, int((~finite).sum())
            )
            boxes, scores, labels = boxes[finite], scores[finite], labels[finite]
        boxes_xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # [M, 4]
        results = []
        for box, score, label in zip(
            boxes_xywh.tolist(), scores.tolist(), labels.tolist(), strict=True
        ):
            category_id = self._label_to_cat.get(label)
            if category_id is None:
                raise DataError(
                    f"image {image_id}: label {label} has no category "
                    f"(known labels {sorted(self._label_to_cat)})"
                )
            results.append(_result(image_id, category_id, box, score))
        return results

    def evaluate(self) -> CocoMetrics:
        """Score everything processed since the last :meth:`reset`.

        Returns:
            ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class": {class_name: AP}}`` in
            percent. ``AP`` is IoU .50:.95, area all, maxDets 100; ``per_class`` comes from the
            same precision entries. With no detections at all every defined metric is ``0.0``.
            Undefined metrics (no ground truth behind them) are ``None``.
        """
        missing = len(self._image_ids) - len(self._results)
        if missing:
            logger.warning(
                "COCO evaluation: %d of %d images were never processed; they count as having "
                "no detections",
                missing,
                len(self._image_ids),
            )
        metrics = run_cocoeval(self._gt_api, self.predictions(), self._cat_names)
        logger.info("COCO bbox: %s", _summary(metrics))
        return metrics

    def predictions(self) -> list[dict[str, Any]]:
        """Return the COCO results so far: ``{image_id, category_id, bbox [x,y,w,h], score}``."""
        return [result for results in self._results.values() for result in results]

    def write_predictions(self, path: str | os.PathLike[str]) -> Path:
        """Write the COCO results JSON atomically (temporary file, then ``os.replace``).

        Boxes are rounded to 0.01 px and scores to 5 decimals; :meth:`evaluate` scores the same
        rounded values, so :func:`score_predictions` on this file reproduces its metrics.

        Args:
            path: Destination file; its folder is created if needed.

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # same folder: atomic
        try:
            with open(tmp, "x", encoding="utf-8") as file:
                json.dump(self.predictions(), file, allow_nan=False, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    def _load_results(self, results: Iterable[Mapping[str, Any]]) -> None:
        """Replace the state by a COCO results list that covers the whole split."""
        self._results = {image_id: [] for image_id in self._image_ids}
        known = set(self._cat_names)
        for raw in results:
            try:
                image_id, category_id = int(raw["image_id"]), int(raw["category_id"])
                x, y, w, h = (float(v) for v in raw["bbox"])
                score = float(raw["score"])
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(f"malformed COCO result {raw!r}: {err}") from err
            if image_id not in self._image_ids:
                raise DataError(f"result image_id {image_id} is not in the COCO ground truth")
            if category_id not in known:
                raise DataError(
                    f"result category_id {category_id} is not evaluated ({sorted(known)})"
                )
            if not all(math.isfinite(v) for v in (x, y, w, h, score)):
                raise DataError(f"non-finite COCO result {raw!r}")
            self._results[image_id].append(_result(image_id, category_id, [x, y, w, h], score))


def _result(
    image_id: int, category_id: int, box_xywh: Sequence[float], score: float
) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [round(v, _BOX_DECIMALS) for v in box_xywh],
        "score": round(score, _SCORE_DECIMALS),
    }


def _validate_labels(
    gt: Mapping[str, Any], label_to_category_id: Mapping[int, int], class_names: Sequence[str]
) -> dict[int, int]:
    labels = sorted(label_to_category_id)
    if labels != list(range(1, len(class_names) + 1)):
        raise ConfigError(
            f"label_to_category_id keys must be 1..{len(class_names)} (one per class name), "
            f"got {labels}"
        )
    if len(set(class_names)) != len(class_names):
        raise ConfigError(f"class_names must be unique, got {list(class_names)}")
    cat_ids = [int(c) for c in label_to_category_id.values()]
    if len(set(cat_ids)) != len(cat_ids):
        raise ConfigError(f"two labels map to the same category: {dict(label_to_category_id)}")
    gt_cats = {int(cat["id"]) for cat in gt["categories"]}
    unknown = sorted(set(cat_ids) - gt_cats)
    if unknown:
        raise ConfigError(f"category ids {unknown} are not in the ground truth ({sorted(gt_cats)})")
    ignored = sorted(gt_cats - set(cat_ids))
    if ignored:
        logger.warning("COCO evaluation ignores ground-truth categories %s (no label)", ignored)
    return {int(label): int(cat) for label, cat in label_to_category_id.items()}


def score_predictions(
    coco_gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]] | str | os.PathLike[str],
    *,
    label_to_category_id: Mapping[int, int] | None = None,
    class_names: Sequence[str] | None = None,
) -> CocoMetrics:
    """Score a COCO results list or file (as written by :meth:`CocoEvaluator.write_predictions`).

    Args:
        coco_gt: COCO ground-truth dict, as for :class:`CocoEvaluator`.
        predictions: A list of ``{image_id, category_id, bbox [x,y,w,h], score}`` or a path to a
            JSON file holding one.
        label_to_category_id: As for :class:`CocoEvaluator`. Leave both this and
            ``class_names`` as ``None`` to evaluate every ground-truth category under its own name.
        class_names: As for :class:`CocoEvaluator`.

    Returns:
        The same metrics dict as :meth:`CocoEvaluator.evaluate`.

    Raises:
        ConfigError: If only one of ``label_to_category_id`` and ``class_names`` is given.
        DataError: If the file is unreadable or a result is malformed or unknown.
    """
    if (label_to_category_id is None) != (class_names is None):
        raise ConfigError("give both label_to_category_id and class_names, or neither")
    if label_to_category_id is None or class_names is None:
        categories = sorted(coco_gt.get("categories", []), key=lambda cat: int(cat["id"]))
        label_to_category_id = {i: int(cat["id"]) for i, cat in enumerate(categories, start=1)}
        class_names = [str(cat["name"]) for cat in categories]
    results: Any = predictions
    if isinstance(predictions, str | os.PathLike):
        try:
            with open(predictions, encoding="utf-8") as file:
                results = json.load(file)
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"cannot read predictions {os.fspath(predictions)!r}: {err}") from err
    if not isinstance(results, list | tuple):
        raise DataError(f"predictions must be a list of results, got {type(results).__name__}")
    evaluator = CocoEvaluator(
        coco_gt, label_to_category_id=label_to_category_id, class_names=class_names
    )
    evaluator._load_results(results)
    return evaluator.evaluate()


def evaluate_detector(
    model: nn.Module,
    loader: DetectorBatches,
    evaluator: CocoEvaluator,
    *,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CocoMetrics:
    """Run a torchvision-contract detector over a loader and return its COCO metrics.

    The evaluator is reset first. The model runs in eval mode under ``torch.inference_mode()``
    (and ``torch.autocast(device.type, dtype=amp_dtype)`` when ``amp_dtype`` is set); each
    module's previous train/eval flag is restored afterwards, even on error.

    Args:
        model: Detector whose eval-mode ``forward(list[Tensor])`` returns one dict per image with
            ``boxes`` ``[M, 4]`` xyxy original-image pixels, ``scores`` ``[M]``, ``labels`` ``[M]``.
        loader: Yields ``(images, targets)``: images float ``[3, H, W]``, targets dicts with
            ``image_id``.
        evaluator: Collects the detections; reset before the first batch.
        device: Device the images are moved to (the model must already be there).
        amp_dtype: Autocast dtype (e.g. ``torch.bfloat16``), or ``None`` for full precision.
        progress: Called as ``progress(batches_done, batches_total)`` after each batch;
            ``batches_total`` is 0 when the loader has no length.

    Returns:
        :meth:`CocoEvaluator.evaluate` of all batches.

    Raises:
        ConfigError: If the model does not return one detection dict per image.
    """
    device = torch.device(device)
    total = len(loader) if isinstance(loader, Sized) else 0
    modes = [(module, module.training) for module in model.modules()]
    evaluator.reset()
    model.eval()
    try:
        with torch.inference_mode():
            for done, (images, targets) in enumerate(loader, start=1):
                with _autocast(device, amp_dtype):
                    outputs = model([image.to(device, non_blocking=True) for image in images])
                if not isinstance(outputs, list) or len(outputs) != len(images):
                    raise ConfigError(
                        f"model must return a list of {len(images)} detection dicts in eval "
                        f"mode, got {type(outputs).__name__}"
                    )
                evaluator.process(
                    [int(target["image_id"]) for target in targets],
                    [{k: v.to("cpu") for k, v in output.items()} for output in outputs],
                )
                if progress is not None:
                    progress(done, total)
    finally:
        for module, training in modes:
            module.training = training
    return evaluator.evaluate()
