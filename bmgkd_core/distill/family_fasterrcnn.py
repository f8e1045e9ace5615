"""Faster R-CNN under the Distiller: RPN and RoI head re-composed from torchvision's public parts.

``RegionProposalNetwork.forward`` is rebuilt from ``head``, ``anchor_generator``, ``box_coder``,
``filter_proposals``, ``assign_targets_to_anchors`` and ``compute_loss`` so the student's
objectness and anchor labels are at hand; ``RoIHeads.forward`` (training branch) from
``select_training_samples``, ``box_roi_pool``, ``box_head``, ``box_predictor`` and
``fastrcnn_loss``. The calls, and so the random fg/bg sampling, happen in the same order as in
``GeneralizedRCNN.forward``, so with no KD term the losses equal the plain detector's.

The teacher runs its RPN head on its own FPN maps (objectness on the same anchors) and its RoI
head on its own maps with the **student's** sampled RoIs, so the rows of both RoI heads pair up.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import concat_box_prediction_layers

from bmgkd_core.distill._context import StepContext
from bmgkd_core.distill.selection import Selection, concat_selections, select_high_quality_rois

__all__ = ["compute_fasterrcnn_losses"]

_ROI_IOU_THRESHOLD = 0.5  # spec §4.2, Faster R-CNN paragraph


@dataclass(frozen=True)
class _RPNPass:
    proposals: list[Tensor]  # per image [P, 4] xyxy after NMS
    objectness: Tensor  # [B * A, 1] logits, images then levels
    labels: list[Tensor]  # per image [A] float: 1 fg, 0 bg, -1 ignored
    losses: dict[str, Tensor]


@dataclass(frozen=True)
class _RoIPass:
    proposals: list[Tensor]  # per image [R_i, 4] sampled RoIs
    matched_idxs: list[Tensor]  # per image [R_i] GT index (clamped to >= 0)
    labels: list[Tensor]  # per image [R_i] class, 0 background
    class_logits: Tensor  # [R, K + 1]
    box_regression: Tensor  # [R, (K + 1) * 4]
    losses: dict[str, Tensor]


def compute_fasterrcnn_losses(
    student: FasterRCNN,
    teacher: FasterRCNN | None,
    ctx: StepContext,
    image_list: ImageList,
    student_feats: OrderedDict[str, Tensor],
    teacher_feats: OrderedDict[str, Tensor] | None,
    targets: Sequence[Mapping[str, Any]],
) -> dict[str, Tensor]:
    """Task losses (torchvision's four keys) and the enabled RPN/RoI response-KD terms.

    Args: as :func:`bmgkd_core.distill.family_retinanet.compute_retinanet_losses`, with the
        FPN maps as ordered dicts (the RoI pooler selects levels by name).

    Returns:
        ``task.loss_classifier``, ``task.loss_box_reg``, ``task.loss_objectness``,
        ``task.loss_rpn_box_reg`` and the enabled ``distill.*`` terms.
    """
    rpn = _run_rpn(student, image_list, student_feats, targets)
    roi = _run_roi(student, image_list, student_feats, rpn.proposals, targets)
    out = {f"task.{k}": v for k, v in {**roi.losses, **rpn.losses}.items()}
    if teacher is None or teacher_feats is None or not ctx.response_terms:
        return out
    with ctx.teacher_mode(image_list.tensors.device):
        t_levels, t_deltas = teacher.rpn.head(list(teacher_feats.values()))
        t_objectness = concat_box_prediction_layers(t_levels, t_deltas)[0].float()
        t_heads = teacher.roi_heads
        # RoIs in float32 whatever the student's precision: an fp32 teacher under an outer
        # autocast (teacher_bf16 off) gets no dtype mix in roi_align, and a bf16 teacher's
        # roi_align (autocast casts to fp32) never sees coordinates rounded to bf16.
        rois = [p.float() for p in roi.proposals]
        pooled = t_heads.box_roi_pool(teacher_feats, rois, image_list.image_sizes)
        t_logits, t_regression = t_heads.box_predictor(t_heads.box_head(pooled))
    if t_objectness.shape != rpn.objectness.shape or t_logits.shape != roi.class_logits.shape:
        raise AssertionError(
            f"teacher/student rows differ: RPN {tuple(t_objectness.shape)} vs "
            f"{tuple(rpn.objectness.shape)}, RoI {tuple(t_logits.shape)} vs "
            f"{tuple(roi.class_logits.shape)}"
        )
    if not ctx.compute_terms:
        return out
    out.update(_rpn_kd(ctx, student, rpn, t_objectness))
    out.update(_roi_kd(ctx, student, roi, t_logits.float(), t_regression.float(), targets))
    if "distill.cls_rpn" in out:  # one `cls` term: RPN binary + RoI softmax (spec §5)
        out["distill.cls"] = out.pop("distill.cls_rpn") + out.pop("distill.cls_roi")
    if "distill.logit_kd_rpn" in out:
        out["distill.logit_kd"] = out.pop("distill.logit_kd_rpn") + out.pop("distill.logit_kd_roi")
    return out


def _run_rpn(
    model: FasterRCNN,
    image_list: ImageList,
    features: Mapping[str, Tensor],
    targets: Sequence[Mapping[str, Any]],
) -> _RPNPass:
    """``RegionProposalNetwork.forward`` (training), keeping objectness and anchor labels."""
    rpn = model.rpn
    feats = list(features.values())
    objectness, deltas = rpn.head(feats)
    anchors = rpn.anchor_generator(image_list, feats)
    num_anchors_per_level = [o[0].numel() for o in objectness]  # A * H * W per level
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
    boxes, _ = rpn.filter_proposals(
        proposals, objectness, image_list.image_sizes, num_anchors_per_level
    )
    labels, matched_gt_boxes = rpn.assign_targets_to_anchors(anchors, list(targets))
    regression_targets = rpn.box_coder.encode(matched_gt_boxes, anchors)
    loss_objectness, loss_box = rpn.compute_loss(objectness, deltas, labels, regression_targets)
    losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
    return _RPNPass(boxes, objectness, labels, losses)


def _run_roi(
    model: FasterRCNN,
    image_list: ImageList,
    features: Mapping[str, Tensor],
    proposals: list[Tensor],
    targets: Sequence[Mapping[str, Any]],
) -> _RoIPass:
    """``RoIHeads.forward`` (training branch), keeping the sampled RoIs and raw predictions."""
    heads = model.roi_heads
    rois, matched_idxs, labels, regression_targets = heads.select_training_samples(
        proposals, list(targets)
    )
    box_features = heads.box_head(heads.box_roi_pool(features, rois, image_list.image_sizes))
    class_logits, box_regression = heads.box_predictor(box_features)
    loss_classifier, loss_box_reg = fastrcnn_loss(
        class_logits, box_regression, labels, regression_targets
    )
    losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
    return _RoIPass(rois, matched_idxs, labels, class_logits, box_regression, losses)


def _num_sampled_anchors(model: FasterRCNN, labels: Sequence[Tensor]) -> Tensor:
    """How many anchors the RPN's fg/bg sampler draws (``min`` rules of the sampler, no RNG)."""
    sampler = model.rpn.fg_bg_sampler
    per_image = int(sampler.batch_size_per_image)
    max_pos = int(per_image * sampler.positive_fraction)
    total = labels[0].new_zeros((), dtype=torch.int64)
    for labels_per_image in labels:
        pos = (labels_per_image >= 1).sum().clamp(max=max_pos)
        neg = torch.minimum((labels_per_image == 0).sum(), per_image - pos)
        total = total + pos + neg
    return total


def _rpn_kd(
    ctx: StepContext, model: FasterRCNN, rpn: _RPNPass, t_objectness: Tensor
) -> dict[str, Tensor]:
    """RPN objectness KD (binary, K = 1) on the non-ignored anchors."""
    kd, losses, out = ctx.kd, ctx.losses, {}
    valid = torch.cat(rpn.labels) >= 0  # [B * A]
    if "cls" in ctx.terms:
        with ctx.section("cls"):
            num_sampled = _num_sampled_anchors(model, rpn.labels)
            cls_rpn = losses.cls(rpn.objectness, t_objectness, valid=valid, num_pos=num_sampled)
        ctx.diag["cls_rpn"] = cls_rpn.detach()
        out["distill.cls_rpn"] = kd.cls_rpn_weight * cls_rpn
    if "logit_kd" in ctx.terms:
        with ctx.section("logit_kd"):
            logit_rpn = losses.logit_kd(rpn.objectness, t_objectness, valid=valid)
        out["distill.logit_kd_rpn"] = kd.logit_kd_weight * logit_rpn
    return out


def _decode_for_class(
    model: FasterRCNN, regression: Tensor, rois: Tensor, classes: Tensor
) -> Tensor:
    """``[R, 4]`` xyxy boxes decoded from each RoI's deltas of class ``classes[r]``."""
    rows = torch.arange(regression.shape[0], device=regression.device)
    deltas = regression.reshape(regression.shape[0], -1, 4)[rows, classes].float()
    boxes: Tensor = model.roi_heads.box_coder.decode_single(deltas, rois.float())
    return boxes


def _roi_kd(
    ctx: StepContext,
    model: FasterRCNN,
    roi: _RoIPass,
    t_logits: Tensor,
    t_regression: Tensor,
    targets: Sequence[Mapping[str, Any]],
) -> dict[str, Tensor]:
    """RoI-head KD: TV-masked softmax KL, HQ box KD and co-optimisation (spec §4, FRCNN)."""
    kd, losses, out = ctx.kd, ctx.losses, {}
    s_logits = roi.class_logits
    with ctx.section("diag"):
        _record_roi_gap(ctx, s_logits, t_logits)
    if "cls" in ctx.terms:
        with ctx.section("cls"):
            cls_roi = losses.cls_roi(s_logits, t_logits)
        ctx.diag["cls_roi"] = cls_roi.detach()
        out["distill.cls_roi"] = kd.cls_weight * cls_roi
    if "logit_kd" in ctx.terms:
        with ctx.section("logit_kd"):
            logit_roi = losses.logit_kd_roi(s_logits, t_logits)
        out["distill.logit_kd_roi"] = kd.logit_kd_weight * logit_roi
    if not ctx.terms & {"reg", "co"}:
        return out
    rois, labels = torch.cat(roi.proposals), torch.cat(roi.labels)
    with ctx.section("select"):  # spec §4.2, shared by reg and co
        gt_class = labels.clamp(min=0)
        s_boxes = _decode_for_class(model, roi.box_regression, rois, gt_class)
        t_boxes = _decode_for_class(model, t_regression, rois, gt_class)
        t_probs = torch.softmax(t_logits, dim=1)
        selection = _select_rois(ctx, roi, t_probs, s_boxes, t_boxes, targets)
    num_pos = (labels > 0).sum().float().clamp(min=1.0)
    if "reg" in ctx.terms:
        with ctx.section("reg"):
            idx = selection.anchor_idx
            box = losses.box(s_boxes[idx], t_boxes[idx], weights=selection.weights, num_pos=num_pos)
        out["distill.reg"] = kd.reg_weight * box
    if "co" in ctx.terms:
        with ctx.section("co"):
            boxes = (s_boxes, t_boxes)
            out.update(_roi_co(ctx, model, roi, t_logits, t_regression, boxes, selection))
    return out


def _roi_co(
    ctx: StepContext,
    model: FasterRCNN,
    roi: _RoIPass,
    t_logits: Tensor,
    t_regression: Tensor,
    gt_class_boxes: tuple[Tensor, Tensor],
    selection: Selection,
) -> dict[str, Tensor]:
    """Co-optimisation on the RoI head (spec §4.3, Faster R-CNN paragraph).

    (a) on the selected positive RoIs with the boxes decoded for the GT class, normalised by the
    positive RoIs; (b) on all sampled RoIs with the boxes decoded for the teacher's argmax
    foreground class, normalised by the number of sampled RoIs (as ``L_cls_roi``).
    """
    s_logits, co = roi.class_logits, ctx.losses.co_roi
    rois, labels = torch.cat(roi.proposals), torch.cat(roi.labels)
    num_pos = (labels > 0).sum().float().clamp(min=1.0)
    s_boxes, t_boxes = gt_class_boxes
    no_rows = torch.zeros_like(labels, dtype=torch.bool)
    co_cls, _ = co.compute_terms(
        s_logits, t_logits, s_boxes, t_boxes, selection, valid=no_rows, num_pos=num_pos
    )
    t_class = t_logits[:, 1:].argmax(dim=1) + 1
    s_boxes = _decode_for_class(model, roi.box_regression, rois, t_class)
    t_boxes = _decode_for_class(model, t_regression, rois, t_class)
    _, co_reg = co.compute_terms(
        s_logits,
        t_logits,
        s_boxes,
        t_boxes,
        Selection.empty(rois.device),
        num_pos=float(max(rois.shape[0], 1)),
    )
    return {"distill.co_cls": co_cls, "distill.co_reg": co_reg}


@torch.no_grad()
def _select_rois(
    ctx: StepContext,
    roi: _RoIPass,
    t_probs: Tensor,
    s_boxes: Tensor,
    t_boxes: Tensor,
    targets: Sequence[Mapping[str, Any]],
) -> Selection:
    """Per image :func:`select_high_quality_rois`, joined over the batch."""
    counts = [int(p.shape[0]) for p in roi.proposals]
    selections, gts = [], []
    chunks = zip(
        torch.split(t_probs, counts),
        torch.split(t_boxes, counts),
        torch.split(s_boxes, counts),
        strict=True,
    )
    for i, (probs_i, t_boxes_i, s_boxes_i) in enumerate(chunks):
        gt_boxes = targets[i]["boxes"]
        selections.append(
            select_high_quality_rois(
                probs_i,
                t_boxes_i,
                s_boxes_i,
                gt_boxes,
                roi.matched_idxs[i],
                roi.labels[i],
                background_class=0,
                iou_threshold=_ROI_IOU_THRESHOLD,
                alpha=ctx.kd.hq_alpha,
                require_teacher_better=ctx.kd.hq_teacher_better,
            )
        )
        gts.append(int(gt_boxes.shape[0]))
    selection = concat_selections(selections, counts, gts)
    ctx.diag["hq_per_image"] = torch.tensor(
        len(selection) / max(len(counts), 1), device=t_probs.device
    )
    return selection


@torch.no_grad()
def _record_roi_gap(ctx: StepContext, s_logits: Tensor, t_logits: Tensor) -> None:
    """Diagnostic: mean over RoIs of ``max_{c≠bg} |p_t − p_s|`` (softmax)."""
    if s_logits.shape[0] == 0:
        return
    gap = (torch.softmax(t_logits, dim=1) - torch.softmax(s_logits.float(), dim=1)).abs()
    ctx.diag["max_dp_mean"] = gap[:, 1:].amax(dim=1).mean()
