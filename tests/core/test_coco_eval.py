"""COCO evaluation: known-answer checks on a hand-made ground truth (no downloads)."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bmgkd_core.errors import ConfigError, DataError
from bmgkd_core.eval import CocoEvaluator, _coco_backend, evaluate_detector, score_predictions

# Non-contiguous category ids; "bird" (9) has no annotation in the split.
LABEL_TO_CAT = {1: 3, 2: 7, 3: 9}
CAT_TO_LABEL = {cat: label for label, cat in LABEL_TO_CAT.items()}
CLASS_NAMES = ("cat", "dog", "bird")
CROWD_BOX = [400.0, 300.0, 150.0, 100.0]  # xywh, image 2, category cat


def _ann(ann_id: int, image_id: int, cat: int, bbox: list[float], crowd: int = 0) -> dict[str, Any]:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": crowd,
    }


@pytest.fixture(autouse=True, params=["faster_coco_eval", "pycocotools"])
def coco_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every test on the real backend and on the pycocotools fallback."""
    if request.param == "pycocotools":
        pytest.importorskip("pycocotools")
        monkeypatch.setattr(_coco_backend, "_backend", _coco_backend._pycocotools_backend)
    assert _coco_backend._backend().name == request.param
    return str(request.param)


@pytest.fixture
def coco_gt() -> dict[str, Any]:
    return {
        "images": [
            {"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in (1, 2, 5)
        ],
        "categories": [
            {"id": 3, "name": "cat"},
            {"id": 7, "name": "dog"},
            {"id": 9, "name": "bird"},
        ],
        "annotations": [
            _ann(1, 1, 3, [10.0, 10.0, 20.0, 20.0]),  # small (400 px²)
            _ann(2, 1, 7, [100.0, 100.0, 50.0, 50.0]),  # medium
            _ann(3, 2, 3, [50.0, 50.0, 200.0, 150.0]),  # large
            _ann(4, 2, 7, [300.0, 200.0, 60.0, 40.0]),  # medium
            _ann(5, 2, 3, CROWD_BOX, crowd=1),
            # image 5 has no ground truth
        ],
    }


def _evaluator(coco_gt: Mapping[str, Any]) -> CocoEvaluator:
    return CocoEvaluator(coco_gt, label_to_category_id=LABEL_TO_CAT, class_names=CLASS_NAMES)


def _detections(rows: list[tuple[list[float], float, int]]) -> dict[str, Tensor]:
    """Rows of (xywh box, score, category id) -> torchvision detection dict (xyxy, labels)."""
    boxes = torch.tensor([[x, y, x + w, y + h] for (x, y, w, h), _, _ in rows], dtype=torch.float32)
    return {
        "boxes": boxes.reshape(-1, 4),
        "scores": torch.tensor([score for _, score, _ in rows], dtype=torch.float32),
        "labels": torch.tensor([CAT_TO_LABEL[cat] for _, _, cat in rows], dtype=torch.int64),
    }


def _rows_of(
    coco_gt: Mapping[str, Any], image_id: int, score: float = 1.0, dx_frac: float = 0.0
) -> list[tuple[list[float], float, int]]:
    """Non-crowd ground truth of one image as (xywh shifted by dx_frac * w, score, category)."""
    return [
        ([a["bbox"][0] + dx_frac * a["bbox"][2], *a["bbox"][1:]], score, a["category_id"])
        for a in coco_gt["annotations"]
        if a["image_id"] == image_id and not a["iscrowd"]
    ]


def _gt_detections(
    coco_gt: Mapping[str, Any], image_id: int, *, score: float = 1.0, dx_frac: float = 0.0
) -> dict[str, Tensor]:
    return _detections(_rows_of(coco_gt, image_id, score, dx_frac))


def _process_gt(evaluator: CocoEvaluator, coco_gt: Mapping[str, Any], **kwargs: Any) -> None:
    image_ids = [img["id"] for img in coco_gt["images"]]
    evaluator.process(image_ids, [_gt_detections(coco_gt, i, **kwargs) for i in image_ids])


def test_coco_evaluator_ground_truth_as_predictions_scores_100(coco_gt: dict[str, Any]) -> None:
    evaluator = _evaluator(coco_gt)
    _process_gt(evaluator, coco_gt)
    metrics = evaluator.evaluate()
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert metrics[key] == pytest.approx(100.0), key
    assert metrics["per_class"] == {
        "cat": pytest.approx(100.0),
        "dog": pytest.approx(100.0),
        "bird": None,
    }


def test_coco_evaluator_zero_predictions_scores_zero(coco_gt: dict[str, Any]) -> None:
    evaluator = _evaluator(coco_gt)
    evaluator.process([1, 2, 5], [_detections([]) for _ in range(3)])
    metrics = evaluator.evaluate()
    assert metrics == {
        "AP": 0.0,
        "AP50": 0.0,
        "AP75": 0.0,
        "APs": 0.0,
        "APm": 0.0,
        "APl": 0.0,
        "per_class": {"cat": 0.0, "dog": 0.0, "bird": None},
    }
    assert evaluator.predictions() == []


def test_coco_evaluator_nothing_processed_scores_zero_and_warns(
    coco_gt: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        metrics = _evaluator(coco_gt).evaluate()
    assert metrics["AP"] == 0.0
    assert "3 of 3 images were never processed" in caplog.text


def test_coco_evaluator_class_without_gt_gives_none_and_valid_json(coco_gt: dict[str, Any]) -> None:
    evaluator = _evaluator(coco_gt)
    _process_gt(evaluator, coco_gt)
    # A confident bird detection: no bird ground truth, so the class stays undefined.
    evaluator.process([5], [_detections([([1.0, 1.0, 30.0, 30.0], 0.9, 9)])])
    metrics = evaluator.evaluate()
    assert metrics["per_class"]["bird"] is None
    assert metrics["AP"] == pytest.approx(100.0)
    json.dumps(metrics, allow_nan=False)  # never NaN


def test_coco_evaluator_area_range_without_gt_gives_none(coco_gt: dict[str, Any]) -> None:
    coco_gt["annotations"] = [a for a in coco_gt["annotations"] if a["id"] in (2, 4)]  # medium only
    evaluator = _evaluator(coco_gt)
    _process_gt(evaluator, coco_gt)
    metrics = evaluator.evaluate()
    assert metrics["APm"] == pytest.approx(100.0)
    assert metrics["APs"] is None
    assert metrics["APl"] is None
    assert metrics["per_class"]["cat"] is None


@pytest.mark.parametrize(
    ("image_id", "expect_full_ap"),
    [(2, True), (5, False)],  # on the crowd region: ignored; same box on an empty image: FP
)
def test_coco_evaluator_detection_on_crowd_region_is_ignored(
    coco_gt: dict[str, Any], image_id: int, expect_full_ap: bool
) -> None:
    evaluator = _evaluator(coco_gt)
    _process_gt(evaluator, coco_gt, score=0.5)
    extra = (CROWD_BOX, 0.99, 3)  # outranks every true positive
    evaluator.process([image_id], [_detections([*_rows_of(coco_gt, image_id, 0.5), extra])])
    metrics = evaluator.evaluate()
    assert (metrics["AP"] == pytest.approx(100.0)) is expect_full_ap
    assert (metrics["per_class"]["cat"] == pytest.approx(100.0)) is expect_full_ap


def test_coco_evaluator_boxes_shifted_half_width_ap50_below_100(coco_gt: dict[str, Any]) -> None:
    evaluator = _evaluator(coco_gt)
    _process_gt(evaluator, coco_gt, dx_frac=0.5)  # IoU = 0.5 / 1.5 = 1/3
    metrics = evaluator.evaluate()
    assert metrics["AP50"] is not None
    assert metrics["AP50"] < 100.0
    assert metrics["AP"] is not None
    assert metrics["AP"] < 100.0


def test_coco_evaluator_write_then_score_predictions_reproduces_metrics(
    coco_gt: dict[str, Any], tmp_path: Path
) -> None:
    evaluator = _evaluator(coco_gt)
    generator = torch.Generator().manual_seed(0)
    for image_id in (1, 2, 5):
        detection = _gt_detections(coco_gt, image_id, score=0.8)
        noise = torch.randn(detection["boxes"].shape, generator=generator) * 4.0
        detection["boxes"] = detection["boxes"] + noise
        detection["scores"] = torch.rand(detection["scores"].shape, generator=generator)
        evaluator.process([image_id], [detection])
    metrics = evaluator.evaluate()
    assert metrics["AP"] is not None
    assert 0.0 < metrics["AP"] < 100.0  # a non-trivial score, so the comparison means something

    path = evaluator.write_predictions(tmp_path / "out" / "predictions.json")
    assert [p.name for p in path.parent.iterdir()] == ["predictions.json"]  # no temp file left
    saved = json.loads(path.read_text())
    assert saved == evaluator.predictions()
    assert set(saved[0]) == {"image_id", "category_id", "bbox", "score"}
    assert saved[0]["category_id"] in (3, 7)

    rescored = score_predictions(
        coco_gt, path, label_to_category_id=LABEL_TO_CAT, class_names=CLASS_NAMES
    )
    assert rescored == metrics
    assert score_predictions(coco_gt, saved)["per_class"] == metrics["per_class"]


def test_score_predictions_empty_list_scores_zero(coco_gt: dict[str, Any]) -> None:
    metrics = score_predictions(coco_gt, [])
    assert metrics["AP"] == 0.0
    assert metrics["per_class"] == {"cat": 0.0, "dog": 0.0, "bird": None}


def test_score_predictions_unknown_image_raises_data_error(coco_gt: dict[str, Any]) -> None:
    result = {"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}
    with pytest.raises(DataError, match="image_id 99"):
        score_predictions(coco_gt, [result])


def test_coco_evaluator_caller_gt_dict_is_not_mutated(coco_gt: dict[str, Any]) -> None:
    before = copy.deepcopy(coco_gt)
    evaluator = _evaluator(coco_gt)
    _process_gt(evaluator, coco_gt)
    evaluator.evaluate()
    assert coco_gt == before


def test_coco_evaluator_annotation_id_zero_still_matches(coco_gt: dict[str, Any]) -> None:
    for ann in coco_gt["annotations"]:
        ann["id"] -= 1  # ids 0..4: pycocotools reads a matched id 0 as "unmatched"
    evaluator = _evaluator(coco_gt)
    _process_gt(evaluator, coco_gt)
    assert evaluator.evaluate()["AP"] == pytest.approx(100.0)


def test_coco_evaluator_reset_forgets_detections(coco_gt: dict[str, Any]) -> None:
    evaluator = _evaluator(coco_gt)
    _process_gt(evaluator, coco_gt)
    evaluator.reset()
    assert evaluator.predictions() == []
    assert evaluator.evaluate()["AP"] == 0.0


def test_coco_evaluator_non_finite_rows_are_dropped(coco_gt: dict[str, Any]) -> None:
    evaluator = _evaluator(coco_gt)
    _process_gt(evaluator, coco_gt)
    bad = _detections([([1.0, 1.0, 5.0, 5.0], 0.99, 7), ([1.0, 1.0, 5.0, 5.0], 0.99, 3)])
    bad["boxes"][0, 0] = float("nan")
    bad["scores"][1] = float("inf")
    evaluator.process([5], [bad])
    assert all(p["image_id"] != 5 for p in evaluator.predictions())
    assert evaluator.evaluate()["AP"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("image_ids", "detection", "match"),
    [
        ([42], _detections([]), "image_id 42"),
        (
            [1],
            {
                "boxes": torch.zeros(1, 4),
                "scores": torch.ones(1),
                "labels": torch.zeros(1, dtype=torch.int64),
            },
            "label 0",
        ),
        (
            [1],
            {
                "boxes": torch.zeros(2, 4),
                "scores": torch.ones(1),
                "labels": torch.ones(1, dtype=torch.int64),
            },
            "expected boxes",
        ),
        ([1], {"boxes": torch.zeros(0, 4), "scores": torch.ones(0)}, "lacks"),
        ([1, 2], _detections([]), "2 image ids but 1"),
    ],
)
def test_coco_evaluator_process_invalid_input_raises_data_error(
    coco_gt: dict[str, Any], image_ids: list[int], detection: dict[str, Tensor], match: str
) -> None:
    with pytest.raises(DataError, match=match):
        _evaluator(coco_gt).process(image_ids, [detection])


@pytest.mark.parametrize(
    ("label_map", "names", "match"),
    [
        ({1: 3, 2: 7}, CLASS_NAMES, "keys must be 1..3"),
        ({0: 3, 1: 7, 2: 9}, CLASS_NAMES, "keys must be 1..3"),
        ({1: 3, 2: 3, 3: 9}, CLASS_NAMES, "same category"),
        ({1: 3, 2: 7, 3: 11}, CLASS_NAMES, r"\[11\]"),
        (LABEL_TO_CAT, ("cat", "cat", "bird"), "unique"),
    ],
)
def test_coco_evaluator_bad_label_map_raises_config_error(
    coco_gt: dict[str, Any], label_map: dict[int, int], names: tuple[str, ...], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        CocoEvaluator(coco_gt, label_to_category_id=label_map, class_names=names)


def test_coco_evaluator_no_images_raises_data_error(coco_gt: dict[str, Any]) -> None:
    coco_gt["images"] = []
    with pytest.raises(DataError, match="images"):
        _evaluator(coco_gt)


class _GroundTruthDetector(nn.Module):
    """Returns the ground truth of the image whose id is written in its pixels."""

    def __init__(self, coco_gt: Mapping[str, Any], *, fail: bool = False) -> None:
        super().__init__()
        self.coco_gt = coco_gt
        self.fail = fail
        self.frozen = nn.BatchNorm2d(3)  # a submodule the caller keeps in eval mode
        self.seen: list[tuple[bool, bool, bool]] = []

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        self.seen.append(
            (self.training, torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu"))
        )
        if self.fail:
            raise RuntimeError("boom")
        return [_gt_detections(self.coco_gt, int(image[0, 0, 0])) for image in images]


def _loader(image_ids: list[list[int]]) -> Iterator[tuple[list[Tensor], list[dict[str, Any]]]]:
    for batch in image_ids:
        yield (
            [torch.full((3, 8, 8), float(i)) for i in batch],
            [{"image_id": torch.tensor(i)} for i in batch],
        )


def test_evaluate_detector_ground_truth_model_scores_100_and_restores_modes(
    coco_gt: dict[str, Any],
) -> None:
    model = _GroundTruthDetector(coco_gt)
    model.train()
    model.frozen.eval()
    evaluator = _evaluator(coco_gt)
    evaluator.process([1], [_detections([([0.0, 0.0, 5.0, 5.0], 1.0, 3)])])  # stale: reset drops it
    calls: list[tuple[int, int]] = []
    batches = [[1, 2], [5]]
    metrics = evaluate_detector(
        model,
        list(_loader(batches)),
        evaluator,
        device="cpu",
        progress=lambda d, t: calls.append((d, t)),
    )
    assert metrics["AP"] == pytest.approx(100.0)
    assert metrics["per_class"]["dog"] == pytest.approx(100.0)
    assert model.seen == [(False, True, False)] * 2
    assert calls == [(1, 2), (2, 2)]
    assert model.training
    assert not model.frozen.training


def test_evaluate_detector_amp_dtype_runs_under_autocast(coco_gt: dict[str, Any]) -> None:
    model = _GroundTruthDetector(coco_gt)
    evaluator = _evaluator(coco_gt)
    metrics = evaluate_detector(
        model,
        _loader([[1], [2, 5]]),
        evaluator,
        device=torch.device("cpu"),
        amp_dtype=torch.bfloat16,
    )
    assert model.seen == [(False, True, True)] * 2
    assert metrics["AP"] == pytest.approx(100.0)


def test_evaluate_detector_model_error_restores_train_mode(coco_gt: dict[str, Any]) -> None:
    model = _GroundTruthDetector(coco_gt, fail=True)
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_detector(model, _loader([[1]]), _evaluator(coco_gt), device="cpu")
    assert model.training
    assert model.frozen.training
