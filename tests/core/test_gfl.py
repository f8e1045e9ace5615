"""GFL: losses against the paper's formulas, ATSS, integral decoding, the torchvision contract."""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from bmgkd_core.models import build_fpn_backbone
from bmgkd_core.models.atss import GFLTargets, assign_atss
from bmgkd_core.models.gfl import GFL, GFL_LOSS_KEYS
from bmgkd_core.models.gfl_loss import (
    compute_distribution_focal_loss,
    compute_gfl_losses,
    compute_quality_focal_loss,
    decode_boxes,
    integrate_distribution,
)

NUM_CLASSES = 3  # labels 1..2, 0 is background


class _TinyBackbone(nn.Module):
    """Five maps at strides 8..128 with 64 channels; a stand-in for the FPN in fast tests."""

    out_channels = 64  # GroupNorm(32) needs > 1 value per group on the 1x1 P7 map

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, stride=8, padding=1)
        self.downs = nn.ModuleList(nn.Conv2d(64, 64, 3, stride=2, padding=1) for _ in range(4))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = OrderedDict([("0", self.stem(x))])
        for index, down in enumerate(self.downs):
            feats[str(index + 1)] = down(feats[str(index)])
        return feats


def _tiny_gfl(**kwargs: Any) -> GFL:
    torch.manual_seed(0)
    return GFL(_TinyBackbone(), NUM_CLASSES, min_size=64, max_size=64, **kwargs)


def _train_losses(
    model: GFL, images: list[Tensor], targets: list[dict[str, Tensor]]
) -> dict[str, Tensor]:
    losses = model.train()(images, targets)
    assert isinstance(losses, dict)
    return losses


def _total(losses: dict[str, Tensor]) -> Tensor:
    return torch.stack(list(losses.values())).sum()


def _target(boxes: list[list[float]], labels: list[int]) -> dict[str, Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _batch() -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [_target([[8, 8, 40, 36], [30, 20, 60, 60]], [1, 2]), _target([], [])]
    return images, targets


# ---------------------------------------------------------------- losses and decoding


def test_quality_focal_loss_hand_example_matches_paper_formula() -> None:
    logits = torch.tensor([[0.3, -1.2]])
    targets = torch.tensor([[0.6, 0.0]])
    beta = 2.0
    expected = []
    for z, y in ((0.3, 0.6), (-1.2, 0.0)):
        s = 1.0 / (1.0 + math.exp(-z))
        expected.append(-(abs(y - s) ** beta) * ((1 - y) * math.log(1 - s) + y * math.log(s)))
    loss = compute_quality_focal_loss(logits, targets, beta)
    torch.testing.assert_close(loss, torch.tensor([expected]), rtol=1e-5, atol=1e-7)


def test_distribution_focal_loss_hand_example_matches_paper_formula() -> None:
    logits = [0.1, 0.5, -0.2, 0.3, 0.0]
    y = 1.3  # between bins 1 and 2
    denom = sum(math.exp(v) for v in logits)
    s1, s2 = math.exp(logits[1]) / denom, math.exp(logits[2]) / denom
    expected = -((2 - y) * math.log(s1) + (y - 1) * math.log(s2))
    loss = compute_distribution_focal_loss(torch.tensor([logits]), torch.tensor([y]))
    torch.testing.assert_close(loss, torch.tensor([expected]), rtol=1e-5, atol=1e-7)


def test_distribution_focal_loss_integer_target_is_cross_entropy() -> None:
    logits = torch.tensor([[0.1, 0.5, -0.2, 0.3, 0.0]])
    loss = compute_distribution_focal_loss(logits, torch.tensor([4.0]))
    torch.testing.assert_close(loss, -logits.log_softmax(-1)[:, 4])


def test_integrate_distribution_one_hot_returns_bin_times_stride() -> None:
    reg_max, stride = 16, 8
    bins = torch.tensor([0, 3, 16, 7])  # l, t, r, b
    logits = torch.full((1, 4, reg_max + 1), -1e4)
    logits[0, torch.arange(4), bins] = 1e4
    logits = logits.reshape(1, -1)
    torch.testing.assert_close(integrate_distribution(logits, reg_max), bins[None].float())
    boxes = decode_boxes(logits, torch.tensor([[100.0, 50.0]]), stride, reg_max)
    expected = torch.tensor([[100.0 - 0, 50.0 - 3 * 8, 100.0 + 16 * 8, 50.0 + 7 * 8]])
    torch.testing.assert_close(boxes, expected)


def test_compute_gfl_losses_one_positive_matches_weighted_formulas() -> None:
    reg_max = 4
    cls_logits = torch.tensor([[[0.0, 2.0, -1.0], [0.0, -3.0, -3.0]]])  # [1, 2 points, 3]
    reg_logits = torch.randn(1, 2, 4 * (reg_max + 1), generator=torch.Generator().manual_seed(0))
    points = torch.tensor([[16.0, 16.0], [48.0, 16.0]])
    strides = torch.tensor([8.0, 8.0])
    gt = torch.tensor([4.0, 6.0, 30.0, 28.0])
    targets = GFLTargets(
        labels=torch.tensor([[1, 0]]),
        boxes=torch.stack([gt, torch.zeros(4)])[None],
        matched_gt=torch.tensor([[0, -1]]),
        valid=torch.tensor([[True, True]]),
    )
    losses = compute_gfl_losses(cls_logits, reg_logits, points, strides, targets, reg_max=reg_max)
    pred = decode_boxes(reg_logits[0, :1], points[:1], 8, reg_max)[0]
    w = torch.sigmoid(torch.tensor(2.0))  # max fg score of the positive
    giou = generalized_box_iou(pred[None], gt[None])[0, 0]
    torch.testing.assert_close(losses["bbox_regression"], 2.0 * w * (1 - giou) / 1.0)
    dist = torch.tensor([16 - 4, 16 - 6, 30 - 16, 28 - 16]) / 8.0
    dfl = compute_distribution_focal_loss(reg_logits[0, 0].view(4, reg_max + 1), dist).mean()
    torch.testing.assert_close(losses["bbox_distribution"], 0.25 * w * dfl)
    assert losses["classification"] > 0


# ---------------------------------------------------------------- ATSS


def _two_level_anchors() -> tuple[Tensor, list[int]]:
    level0 = [[0, 0, 10, 10], [10, 0, 20, 10], [21, 0, 31, 10], [40, 0, 50, 10]]
    level1 = [[-10, -10, 30, 30], [30, -10, 70, 30]]
    return torch.tensor(level0 + level1, dtype=torch.float32), [4, 2]


def test_assign_atss_hand_case_picks_best_candidate_per_gt() -> None:
    # Candidates (topk=2 per level) of GT0: a0, a1 | a4, a5 with IoUs 1, 0, 1/16, 0 ->
    # threshold mean + std = 0.266 + 0.490 -> only a0. GT1 symmetrically picks a1.
    anchors, per_level = _two_level_anchors()
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]])
    matched = assign_atss(anchors, per_level, gts, topk=2)
    assert matched.tolist() == [0, 1, -1, -1, -1, -1]


def test_assign_atss_point_positive_for_two_gts_takes_highest_iou() -> None:
    anchors = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210]])
    gts = torch.tensor([[0.0, 0, 12, 12], [0.0, 0, 10, 12]])  # IoU with a0: 0.69 and 0.83
    matched = assign_atss(anchors, [3], gts, topk=3)
    assert matched.tolist() == [1, -1, -1]


def test_assign_atss_centre_outside_gt_is_negative() -> None:
    anchors = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210]])
    gts = torch.tensor([[6.0, 0, 16, 10]])  # a0 passes the IoU threshold, centre x=5 < 6
    assert assign_atss(anchors, [3], gts, topk=3).tolist() == [-1, -1, -1]


def test_assign_atss_no_gt_all_negative() -> None:
    anchors, per_level = _two_level_anchors()
    assert assign_atss(anchors, per_level, torch.zeros(0, 4)).tolist() == [-1] * 6


def _reference_atss(anchors: Tensor, per_level: list[int], gts: Tensor, topk: int) -> list[int]:
    """Loop-by-loop ATSS (mmdet ATSSAssigner semantics) in float64 Python."""
    a, g = anchors.double().tolist(), gts.double().tolist()

    def iou(p: list[float], q: list[float]) -> float:
        w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        area = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1])
        return w * h / (area - w * h)

    centre = [((p[0] + p[2]) / 2, (p[1] + p[3]) / 2) for p in a]
    best = [(-1, -math.inf)] * len(a)
    for gi, box in enumerate(g):
        gc = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        candidates, start = [], 0
        for count in per_level:
            by_dist = sorted(range(start, start + count), key=lambda i: math.dist(centre[i], gc))
            candidates += by_dist[:topk]
            start += count
        ious = [iou(a[i], box) for i in candidates]
        thr = statistics.mean(ious) + statistics.stdev(ious)
        for i, v in zip(candidates, ious, strict=True):
            cx, cy = centre[i]
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > 0.01
            if v >= thr and inside and v > best[i][1]:
                best[i] = (gi, v)
    return [b[0] for b in best]


def test_assign_atss_random_scene_matches_loop_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    per_level = [40, 20, 10]
    centres = torch.rand(sum(per_level), 2, generator=gen) * 100
    sides = torch.tensor([8.0] * 40 + [16.0] * 20 + [32.0] * 10)[:, None] * 2
    anchors = torch.cat([centres - sides / 2, centres + sides / 2], dim=1)
    xy = torch.rand(4, 2, generator=gen) * 70
    gts = torch.cat([xy, xy + 10 + torch.rand(4, 2, generator=gen) * 30], dim=1)
    matched = assign_atss(anchors, per_level, gts, topk=5)
    assert matched.tolist() == _reference_atss(anchors, per_level, gts, topk=5)
    assert (matched >= 0).sum() > 4


# ---------------------------------------------------------------- detector contract


def test_gfl_train_returns_exactly_documented_keys() -> None:
    losses = _train_losses(_tiny_gfl(), *_batch())
    assert tuple(losses) == GFL_LOSS_KEYS
    assert GFL_LOSS_KEYS == ("classification", "bbox_regression", "bbox_distribution")
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in losses.values())


def test_gfl_image_without_gt_zero_box_losses_positive_qfl() -> None:
    losses = _train_losses(_tiny_gfl(), [torch.rand(3, 64, 64)], [_target([], [])])
    assert losses["bbox_regression"].item() == 0.0
    assert losses["bbox_distribution"].item() == 0.0
    assert losses["classification"].item() > 0.0
    total = _total(losses)
    assert torch.isfinite(total)
    torch.autograd.backward(total)  # still attached to the graph


def test_gfl_mixed_empty_and_nonempty_batch_finite_losses() -> None:
    losses = _train_losses(_tiny_gfl(), *_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["bbox_regression"] > 0
    assert losses["bbox_distribution"] > 0


def test_gfl_backward_reaches_head_and_backbone() -> None:
    model = _tiny_gfl()
    torch.autograd.backward(_total(_train_losses(model, *_batch())))
    params = dict(model.named_parameters())
    for name in (
        "head.cls_logits.weight",
        "head.reg_logits.weight",
        "head.cls_tower.0.weight",
        "head.reg_tower.0.weight",
        "head.scales.0.scale",
        "backbone.stem.weight",
    ):
        grad = params[name].grad
        assert grad is not None, name
        assert grad.abs().sum() > 0, name


def test_gfl_compute_loss_shared_path_matches_forward() -> None:
    model = _tiny_gfl()
    images, targets = _batch()
    losses = _train_losses(model, images, targets)
    image_list, targets_t = model.transform(images, [dict(t) for t in targets])
    head_outputs = model.forward_head(list(model.backbone(image_list.tensors).values()))
    manual = model.compute_loss(targets_t, head_outputs, image_list.image_sizes)
    for key in GFL_LOSS_KEYS:
        torch.testing.assert_close(manual[key], losses[key])
    boxes = model.decode_boxes(head_outputs)
    assert [b.shape for b in boxes] == [(2, h * w, 4) for h, w in head_outputs.sizes_per_level]
    assert [c.shape[-1] for c in head_outputs.cls_logits_per_level] == [NUM_CLASSES] * 5


def test_gfl_assign_targets_padding_points_invalid() -> None:
    model = _tiny_gfl()
    images, targets = _batch()  # the second image is 48 px high, padded to 64
    image_list, targets_t = model.transform(images, [dict(t) for t in targets])
    head_outputs = model.forward_head(list(model.backbone(image_list.tensors).values()))
    assignment = model.assign_targets(targets_t, head_outputs, image_list.image_sizes)
    points = torch.cat(head_outputs.points_per_level)
    height, width = image_list.image_sizes[1]
    expected = (points[:, 0] < width) & (points[:, 1] < height)
    assert torch.equal(assignment.valid[1], expected)
    assert not expected.all()
    assert assignment.valid[0].all()
    assert not (assignment.positive & ~assignment.valid).any()
    assert set(assignment.labels[0].tolist()) == {0, 1, 2}


def test_gfl_eval_boxes_inside_original_image() -> None:
    model = _tiny_gfl(score_thresh=0.0, detections_per_img=7).eval()
    images = [torch.rand(3, 80, 120), torch.rand(3, 100, 60)]
    with torch.no_grad():
        detections = model(images)
    assert isinstance(detections, list)
    assert len(detections) == 2
    for det, image in zip(detections, images, strict=True):
        assert set(det) == {"boxes", "labels", "scores"}
        assert 0 < det["boxes"].shape[0] <= 7
        height, width = image.shape[-2:]
        boxes = det["boxes"]
        assert (boxes[:, :2] >= 0).all()
        assert (boxes[:, 2] <= width).all()
        assert (boxes[:, 3] <= height).all()
        assert ((det["labels"] >= 1) & (det["labels"] < NUM_CLASSES)).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_gfl_eval_nothing_above_threshold_returns_empty_tensors() -> None:
    model = _tiny_gfl(score_thresh=1.0).eval()
    with torch.no_grad():
        detections = model([torch.rand(3, 64, 64)])
    assert isinstance(detections, list)
    assert detections[0]["boxes"].shape == (0, 4)
    assert detections[0]["scores"].shape == detections[0]["labels"].shape == (0,)


def test_gfl_forward_inputs_not_mutated() -> None:
    images, targets = _batch()
    images_before = [img.clone() for img in images]
    targets_before = [{k: v.clone() for k, v in t.items()} for t in targets]
    for mode in (True, False):
        model = _tiny_gfl().train(mode)
        model(images, targets)
        assert all(torch.equal(a, b) for a, b in zip(images, images_before, strict=True))
        for t, t0 in zip(targets, targets_before, strict=True):
            assert t.keys() == t0.keys()
            assert all(torch.equal(t[k], t0[k]) for k in t)


def test_gfl_train_without_targets_raises() -> None:
    with pytest.raises(ValueError, match="targets"):
        _tiny_gfl().train()([torch.rand(3, 64, 64)])


def test_gfl_degenerate_box_raises_value_error_naming_image() -> None:
    images, targets = _batch()
    targets[1] = _target([[10, 10, 10, 20]], [1])
    with pytest.raises(ValueError, match="index 1"):
        _tiny_gfl().train()(images, targets)


@pytest.mark.parametrize(
    "target",
    [
        {"boxes": torch.zeros(4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[0, 0, 5, 5]]), "labels": torch.tensor([1])},  # int boxes
        _target([[0, 0, 5, 5]], [0]),  # background label
        _target([[0, 0, 5, 5]], [NUM_CLASSES]),  # label out of range
        _target([[0, 0, float("nan"), 5]], [1]),
    ],
)
def test_gfl_invalid_target_raises_value_error(target: dict[str, Tensor]) -> None:
    with pytest.raises(ValueError, match=r"(index|at) 0"):
        _tiny_gfl().train()([torch.rand(3, 64, 64)], [target])


def test_gfl_bf16_autocast_losses_float32_finite() -> None:
    model = _tiny_gfl()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _train_losses(model, *_batch())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


@pytest.mark.slow  # 10-23 s on two shared CPU cores
def test_gfl_resnet18_overfit_one_image_halves_total_loss() -> None:
    # A grid-aligned box: DFL's minimum is 0 only when the distance targets fall on bins.
    torch.manual_seed(0)
    model = GFL(build_fpn_backbone("resnet18", "p3p7"), NUM_CLASSES, min_size=96, max_size=96)
    image = torch.rand(3, 96, 96)
    target = _target([[16, 16, 80, 80]], [1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history: list[float] = []
    for _ in range(60):
        total = _total(_train_losses(model, [image], [target]))
        optimizer.zero_grad()
        torch.autograd.backward(total)
        optimizer.step()
        history.append(total.item())
    assert min(history[-5:]) <= 0.5 * history[0]
