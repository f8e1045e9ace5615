"""BMGKD distillation terms (spec §2–§4, unit tests of §9): pure tensors, CPU, fast."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou_loss

from bmgkd_core.distill import (
    BoxKDLoss,
    CoOptimizationLoss,
    CosineMaskFeatureLoss,
    DistributionKDLoss,
    DynamicClsKDLoss,
    LogitKDLoss,
    PatchCKALoss,
    PKDLoss,
    RoIClsKDLoss,
    Selection,
    concat_selections,
    linear_cka,
    select_high_quality_boxes,
    select_high_quality_rois,
    standardize_per_channel,
)

Tensors = list[torch.Tensor]
LossCall = Callable[[Tensors, Tensors], torch.Tensor]


def _boxes(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 50
    wh = torch.rand(n, 2, generator=gen) * 50 + 1
    return torch.cat([xy, xy + wh], dim=1)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _selection(n: int, num_classes: int) -> Selection:
    idx = torch.arange(0, n, 2, dtype=torch.int64)
    return Selection(idx, torch.zeros_like(idx), idx % num_classes, torch.rand(len(idx)) + 0.5)


# Each case: (student inputs, teacher inputs, call) for n rows; student/teacher differ (seeds).
def _case(name: str, n: int) -> tuple[Tensors, Tensors, LossCall]:
    k = 5
    if name in ("patch_cka", "cosine_mask", "pkd"):
        module = {"patch_cka": PatchCKALoss(), "cosine_mask": CosineMaskFeatureLoss()}.get(
            name, PKDLoss()
        )
        return (
            [_randn(2, 8, 20, 36, seed=1)],
            [_randn(2, 8, 20, 36, seed=2)],
            lambda s, t: module(s[0], t[0]),
        )
    if name == "dynamic_cls":
        valid = torch.arange(n) % 3 != 0
        return (
            [_randn(n, k, seed=1)],
            [_randn(n, k, seed=2)],
            lambda s, t: DynamicClsKDLoss()(s[0], t[0], valid=valid, num_pos=3.0),
        )
    if name in ("roi_cls", "logit_kd_softmax", "logit_kd_sigmoid"):
        module = {
            "roi_cls": RoIClsKDLoss(),
            "logit_kd_softmax": LogitKDLoss(temperature=2.0, activation="softmax"),
        }.get(name, LogitKDLoss())
        return (
            [_randn(n, k + 1, seed=1)],
            [_randn(n, k + 1, seed=2)],
            lambda s, t: module(s[0], t[0]),
        )
    if name == "box_kd":
        weights = torch.rand(n) + 0.1
        return (
            [_boxes(n, seed=1)],
            [_boxes(n, seed=2)],
            lambda s, t: BoxKDLoss()(s[0], t[0], weights=weights, num_pos=2.0),
        )
    if name == "distribution_kd":
        return (
            [_randn(n, 4, 17, seed=1)],
            [_randn(n, 4, 17, seed=2)],
            lambda s, t: DistributionKDLoss()(s[0], t[0], weights=torch.ones(n), num_pos=2.0),
        )
    assert name == "co_optimization"
    selection = _selection(n, k)
    return (
        [_randn(n, k, seed=1), _boxes(n, seed=1)],
        [_randn(n, k, seed=2), _boxes(n, seed=2)],
        lambda s, t: CoOptimizationLoss()(s[0], t[0], s[1], t[1], selection, num_pos=2.0),
    )


ALL_CASES = [
    "patch_cka",
    "cosine_mask",
    "pkd",
    "dynamic_cls",
    "roi_cls",
    "logit_kd_softmax",
    "logit_kd_sigmoid",
    "box_kd",
    "distribution_kd",
    "co_optimization",
]
ROW_CASES = ALL_CASES[3:]


def _leaves(tensors: Tensors, dtype: torch.dtype = torch.float32) -> Tensors:
    return [t.to(dtype).requires_grad_(True) for t in tensors]


# ---------------------------------------------------------------- generic contract of every loss


@pytest.mark.parametrize("name", ALL_CASES)
def test_loss_backward_gradient_reaches_student_only(name: str) -> None:
    student, teacher, call = _case(name, 12)
    student, teacher = _leaves(student), _leaves(teacher)
    loss = call(student, teacher)
    assert loss.dim() == 0
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert loss.item() > 0
    loss.backward()
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in student)
    assert any(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


@pytest.mark.parametrize("name", ALL_CASES)
def test_loss_student_equals_teacher_is_zero(name: str) -> None:
    student, _, call = _case(name, 12)
    teacher = [s.clone() for s in student]
    if name == "co_optimization":  # term (a) is a soft-target BCE: zero only on an empty H
        loss = CoOptimizationLoss()(
            student[0], teacher[0], student[1], teacher[1], Selection.empty()
        )
    else:
        loss = call(_leaves(student), _leaves(teacher))
    assert loss.abs().item() < 1e-5


@pytest.mark.parametrize("name", ALL_CASES)
def test_loss_bf16_inputs_finite_fp32(name: str) -> None:
    student, teacher, call = _case(name, 12)
    student, teacher = _leaves(student, torch.bfloat16), _leaves(teacher, torch.bfloat16)
    loss = call(student, teacher)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert all(s.grad is not None and torch.isfinite(s.grad.float()).all() for s in student)


@pytest.mark.parametrize("name", ROW_CASES)
def test_loss_no_rows_is_zero_with_grad_path(name: str) -> None:
    student, teacher, call = _case(name, 0)
    student, teacher = _leaves(student), _leaves(teacher)
    loss = call(student, teacher)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert all(s.grad is not None for s in student)


@pytest.mark.parametrize(
    ("module", "student", "teacher"),
    [
        (PatchCKALoss(), torch.zeros(1, 8, 16, 16), torch.zeros(1, 4, 16, 16)),
        (CosineMaskFeatureLoss(), torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 4, 5)),
        (PKDLoss(), torch.zeros(8, 4, 4), torch.zeros(8, 4, 4)),
        (DynamicClsKDLoss(), torch.zeros(3, 4), torch.zeros(3, 5)),
        (BoxKDLoss(), torch.zeros(3, 4), torch.zeros(2, 4)),
    ],
)
def test_loss_mismatched_shapes_raises_value_error(
    module: torch.nn.Module, student: torch.Tensor, teacher: torch.Tensor
) -> None:
    with pytest.raises(ValueError, match=r"got \("):
        module(student, teacher)


# ---------------------------------------------------------------------------------- A1: CKA


@pytest.mark.parametrize("form", ["gram", "feature", "auto"])
@pytest.mark.parametrize("center", [True, False])
def test_linear_cka_same_input_is_one(form: str, center: bool) -> None:
    x = _randn(3, 10, 7)
    cka = linear_cka(x, x, center=center, form=form)  # type: ignore[arg-type]
    assert cka.shape == (3,)
    torch.testing.assert_close(cka, torch.ones(3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("center", [True, False])
def test_linear_cka_scaled_rotated_y_invariant(center: bool) -> None:
    x, y = _randn(2, 12, 6, seed=1), _randn(2, 12, 6, seed=2)
    q, _ = torch.linalg.qr(_randn(6, 6, seed=3))
    expected = linear_cka(x, y, center=center)
    rotated = linear_cka(x, 3.7 * y @ q, center=center)
    torch.testing.assert_close(rotated, expected, atol=1e-5, rtol=1e-5)
    assert (expected < 1).all()


@pytest.mark.parametrize(("n", "dx", "dy"), [(9, 5, 7), (5, 9, 4), (16, 16, 3)])
@pytest.mark.parametrize("center", [True, False])
def test_linear_cka_gram_form_equals_feature_form(n: int, dx: int, dy: int, center: bool) -> None:
    x, y = _randn(4, n, dx, seed=1), _randn(4, n, dy, seed=2)
    gram = linear_cka(x, y, center=center, form="gram")
    feature = linear_cka(x, y, center=center, form="feature")
    torch.testing.assert_close(gram, feature, atol=1e-6, rtol=1e-5)


def test_linear_cka_zero_input_is_zero_not_nan() -> None:
    cka = linear_cka(torch.zeros(2, 5, 3), _randn(2, 5, 4))
    assert torch.equal(cka, torch.zeros(2))


def test_patch_cka_loss_non_multiple_of_16_reports_stats() -> None:
    loss_fn = PatchCKALoss()
    loss = loss_fn(_randn(2, 4, 33, 50, seed=1), _randn(2, 4, 33, 50, seed=2))  # -> 48 x 64
    assert torch.isfinite(loss)
    assert loss > 0
    assert loss_fn.last_stats["num_patches"].item() == 12
    assert 0 <= loss_fn.last_stats["cka_intra"].item() <= 1
    assert 0 <= loss_fn.last_stats["cka_inter"].item() <= 1


def test_patch_cka_loss_few_patches_skips_intra_term() -> None:
    loss_fn = PatchCKALoss(inter_weight=0.0)
    loss = loss_fn(_randn(2, 4, 7, 9, seed=1).requires_grad_(True), _randn(2, 4, 7, 9, seed=2))
    assert loss.item() == 0.0
    assert loss.requires_grad
    assert "cka_intra" not in loss_fn.last_stats


# ------------------------------------------------------------------- A2: cosine-masked features


def test_cosine_mask_masks_mean_one_per_image_and_detached() -> None:
    student = _randn(3, 6, 5, 7, seed=1).requires_grad_(True)
    teacher = _randn(3, 6, 5, 7, seed=2)
    mask_sp, mask_ch = CosineMaskFeatureLoss().masks(student, teacher)
    assert mask_sp.shape == (3, 5, 7)
    assert mask_ch.shape == (3, 6)
    torch.testing.assert_close(mask_sp.mean(dim=(1, 2)), torch.ones(3))
    torch.testing.assert_close(mask_ch.mean(dim=1), torch.ones(3))
    assert not mask_sp.requires_grad
    assert not mask_ch.requires_grad


def test_cosine_mask_feature_loss_gradient_treats_masks_as_constants() -> None:
    loss_fn = CosineMaskFeatureLoss()
    student = _randn(2, 6, 5, 7, seed=1).requires_grad_(True)
    teacher = _randn(2, 6, 5, 7, seed=2)
    (grad,) = torch.autograd.grad(loss_fn(student, teacher), student)
    mask_sp, mask_ch = loss_fn.masks(student, teacher)
    mask = mask_sp[:, None] * mask_ch[:, :, None, None]
    diff = standardize_per_channel(student) - standardize_per_channel(teacher)
    (expected,) = torch.autograd.grad(0.5 * (mask * diff.pow(2)).mean(), student)
    torch.testing.assert_close(grad, expected)
    assert 0 < loss_fn.last_stats["mask_entropy_sp"].item() <= 1


def test_pkd_loss_is_one_minus_pearson_for_single_channel() -> None:
    s, t = _randn(1, 1, 16, 16, seed=1), _randn(1, 1, 16, 16, seed=2)
    r = torch.corrcoef(torch.stack([s.flatten(), t.flatten()]))[0, 1]
    n = s.numel()
    torch.testing.assert_close(PKDLoss()(s, t), (1 - r) * (n - 1) / n, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- B1: cls KD terms


def test_dynamic_cls_kd_loss_matches_formula_and_clamps_num_pos() -> None:
    z_s, z_t = _randn(6, 3, seed=1), _randn(6, 3, seed=2)
    valid = torch.tensor([True, True, False, True, False, True])
    p_t, p_s = z_t.sigmoid(), z_s.sigmoid()
    bce = F.binary_cross_entropy_with_logits(z_s, p_t, reduction="none")
    expected = ((p_t - p_s).abs() * bce)[valid].sum()
    loss_fn = DynamicClsKDLoss()
    torch.testing.assert_close(loss_fn(z_s, z_t, valid=valid, num_pos=0.0), expected)
    torch.testing.assert_close(loss_fn(z_s, z_t, valid=valid, num_pos=4.0), expected / 4)


def test_roi_cls_kd_loss_matches_formula() -> None:
    z_s, z_t = _randn(4, 6, seed=1), _randn(4, 6, seed=2)
    p_t, p_s = z_t.softmax(1), z_s.softmax(1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1)
    expected = (0.5 * (p_t - p_s).abs().sum(1) * kl).sum() / 4
    torch.testing.assert_close(RoIClsKDLoss()(z_s, z_t), expected)


def test_logit_kd_loss_sigmoid_has_bce_gradient() -> None:
    z_s = _randn(5, 3, seed=1).requires_grad_(True)
    z_t = _randn(5, 3, seed=2)
    (grad,) = torch.autograd.grad(LogitKDLoss()(z_s, z_t), z_s)
    bce = F.binary_cross_entropy_with_logits(z_s, z_t.sigmoid(), reduction="sum") / 5
    (expected,) = torch.autograd.grad(bce, z_s)
    torch.testing.assert_close(grad, expected)


# --------------------------------------------------------------- B2: high-quality box selection

GT = torch.tensor([[0.0, 0.0, 100.0, 100.0]])


def _hand_made_image(
    num_anchors: int = 30,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[teacher_probs, teacher_boxes, student_boxes, anchor_centers]`` for 1 GT of class 1.

    Anchor 0: teacher box == GT, student worse. Anchor 1: teacher worse than student.
    Anchor 2: perfect teacher box but centre outside the GT. Others: teacher score 0.
    """
    probs = torch.zeros(num_anchors, 3)
    probs[:3, 1] = 0.9
    teacher_boxes = GT.repeat(num_anchors, 1)
    teacher_boxes[1] = torch.tensor([0.0, 0.0, 100.0, 90.0])  # IoU 0.9
    student_boxes = GT.repeat(num_anchors, 1)
    student_boxes[0] = torch.tensor([0.0, 0.0, 100.0, 80.0])  # IoU 0.8
    centers = torch.full((num_anchors, 2), 50.0)
    centers[2] = torch.tensor([150.0, 150.0])
    return probs, teacher_boxes, student_boxes, centers


def test_select_high_quality_boxes_teacher_better_than_student_kept() -> None:
    selection = select_high_quality_boxes(
        *_hand_made_image(), gt_boxes=GT, gt_labels=torch.tensor([1])
    )
    assert selection.anchor_idx.tolist() == [0]
    assert selection.labels.tolist() == [1]
    assert selection.gt_idx.tolist() == [0]
    torch.testing.assert_close(selection.weights, torch.tensor([0.9**0.2]))


def test_select_high_quality_boxes_without_teacher_test_keeps_worse_teacher() -> None:
    image = _hand_made_image()
    selection = select_high_quality_boxes(
        *image, gt_boxes=GT, gt_labels=torch.tensor([1]), require_teacher_better=False
    )
    assert selection.anchor_idx.tolist() == [0, 1]
    fixed = select_high_quality_boxes(
        *image,
        gt_boxes=GT,
        gt_labels=torch.tensor([1]),
        require_teacher_better=False,
        fixed_iou=0.95,
    )
    assert fixed.anchor_idx.tolist() == [0]


def test_select_high_quality_boxes_shared_anchor_keeps_max_quality_gt() -> None:
    image = _hand_made_image()
    image[0][0, 2] = 0.5  # anchor 0 also a candidate for the second GT
    gt_boxes = torch.tensor([[0.0, 0.0, 100.0, 95.0], [0.0, 0.0, 100.0, 100.0]])
    selection = select_high_quality_boxes(*image, gt_boxes=gt_boxes, gt_labels=torch.tensor([2, 1]))
    assert selection.anchor_idx.tolist() == [0]
    assert selection.gt_idx.tolist() == [1]
    assert selection.labels.tolist() == [1]


def test_select_high_quality_boxes_no_gt_empty_and_losses_zero() -> None:
    image = _hand_made_image()
    selection = select_high_quality_boxes(
        *image, gt_boxes=torch.zeros(0, 4), gt_labels=torch.zeros(0, dtype=torch.int64)
    )
    assert len(selection) == 0
    assert selection.anchor_idx.dtype == torch.int64
    idx = selection.anchor_idx
    logits = _randn(30, 3, seed=1).requires_grad_(True)
    boxes = _boxes(30, seed=1).requires_grad_(True)
    dists = _randn(30, 4, 17, seed=1).requires_grad_(True)
    t_boxes, t_dists = _boxes(30, seed=2), _randn(30, 4, 17, seed=2)
    losses = [
        BoxKDLoss()(boxes[idx], t_boxes[idx], weights=selection.weights, num_pos=0),
        DistributionKDLoss()(dists[idx], t_dists[idx], weights=selection.weights),
        CoOptimizationLoss().compute_terms(logits, _randn(30, 3), boxes, t_boxes, selection)[0],
    ]
    for loss in losses:
        assert loss.item() == 0.0
        assert torch.isfinite(loss)
    sum(losses).backward()
    assert boxes.grad is not None
    assert torch.isfinite(boxes.grad).all()


def test_select_high_quality_boxes_label_out_of_range_raises_value_error() -> None:
    with pytest.raises(ValueError, match="labels must index"):
        select_high_quality_boxes(*_hand_made_image(), gt_boxes=GT, gt_labels=torch.tensor([3]))


def test_select_high_quality_rois_keeps_good_foreground_rois() -> None:
    teacher_boxes = torch.tensor([[0.0, 0, 100, 100], [0, 0, 100, 40], [0, 0, 100, 100]])
    student_boxes = torch.tensor([[0.0, 0, 100, 80], [0, 0, 100, 20], [0, 0, 100, 50]])
    probs = torch.full((3, 3), 0.5)
    selection = select_high_quality_rois(
        probs, teacher_boxes, student_boxes, GT, torch.zeros(3, dtype=torch.int64),
        torch.tensor([1, 1, 0]),
    )  # fmt: skip
    assert selection.anchor_idx.tolist() == [0]
    assert selection.labels.tolist() == [1]
    torch.testing.assert_close(selection.weights, torch.tensor([0.5**0.2]))
    empty = select_high_quality_rois(
        probs, teacher_boxes, student_boxes, torch.zeros(0, 4), torch.zeros(3, dtype=torch.int64),
        torch.tensor([1, 1, 0]),
    )  # fmt: skip
    assert len(empty) == 0


def test_concat_selections_offsets_anchor_and_gt_indices() -> None:
    one = Selection(torch.tensor([1, 3]), torch.tensor([0, 1]), torch.tensor([2, 2]), torch.ones(2))
    joined = concat_selections([one, Selection.empty(), one], [5, 4, 6], [2, 0, 3])
    assert joined.anchor_idx.tolist() == [1, 3, 10, 12]
    assert joined.gt_idx.tolist() == [0, 1, 2, 3]


# ------------------------------------------------------------------------- B3: co-optimization


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_co_optimization_loss_matches_formula(activation: str) -> None:
    z_s, z_t = _randn(6, 4, seed=1), _randn(6, 4, seed=2)
    b_s, b_t = _boxes(6, seed=1), _boxes(6, seed=2)
    selection = Selection(torch.tensor([1, 4]), torch.zeros(2, dtype=torch.int64),
                          torch.tensor([2, 3]), torch.tensor([0.5, 1.0]))  # fmt: skip
    loss_fn = CoOptimizationLoss(activation=activation, background_class=0)  # type: ignore[arg-type]
    cls_term, reg_term = loss_fn.compute_terms(z_s, z_t, b_s, b_t, selection, num_pos=2.0)
    probs = torch.sigmoid if activation == "sigmoid" else lambda z: z.softmax(1)
    p_s, p_t = probs(z_s), probs(z_t)
    rows, cols = selection.anchor_idx, selection.labels
    iou = torch.diag(box_iou(b_s[rows], b_t[rows]))
    y, p = p_t[rows, cols] * iou, p_s[rows, cols]
    expected_cls = (
        selection.weights * (y - p).abs() * F.binary_cross_entropy(p, y, reduction="none")
    ).sum() / 2
    gap = (p_t - p_s).abs()[:, 1:].amax(1)
    giou = generalized_box_iou_loss(b_s, b_t, reduction="none")
    torch.testing.assert_close(cls_term, expected_cls)
    torch.testing.assert_close(reg_term, 2.0 * (gap * giou).sum() / 2)


def test_co_optimization_loss_detach_iou_false_sends_cls_gradient_to_boxes() -> None:
    z_s, z_t = _randn(6, 4, seed=1).requires_grad_(True), _randn(6, 4, seed=2)
    b_s = _boxes(6, seed=1).requires_grad_(True)
    b_t = _boxes(6, seed=1) + 1.0
    selection = Selection(torch.tensor([1, 4]), torch.zeros(2, dtype=torch.int64),
                          torch.tensor([2, 3]), torch.ones(2))  # fmt: skip
    for detach_iou, expect_grad in ((True, False), (False, True)):
        loss_fn = CoOptimizationLoss(reg_weight=0.0, detach_iou=detach_iou)
        cls_term, _ = loss_fn.compute_terms(z_s, z_t, b_s, b_t, selection)
        (grad,) = torch.autograd.grad(cls_term, b_s, allow_unused=True)
        assert (grad is not None and grad.abs().sum().item() > 0) == expect_grad
