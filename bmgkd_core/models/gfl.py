"""GFL (Generalized Focal Loss, Li et al., NeurIPS 2020) with torchvision's detector contract."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms, clip_boxes_to_image

from bmgkd_core.errors import ConfigError, DataError
from bmgkd_core.models.atss import GFLTargets, assign_gfl_targets
from bmgkd_core.models.gfl_head import DEFAULT_STRIDES, GFLHead, GFLHeadOutputs
from bmgkd_core.models.gfl_loss import GFL_LOSS_KEYS, compute_gfl_losses, decode_boxes

__all__ = ["GFL", "GFL_LOSS_KEYS"]

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


class GFL(nn.Module):
    """GFL detector: FPN backbone + :class:`GFLHead`, ATSS assignment, QFL/DFL/GIoU losses.

    Labels are ``1..K`` with 0 for background and ``num_classes = K + 1``: class index = label,
    and logit 0 never receives a positive target (it is ignored at inference).

    Train mode: ``model(images, targets)`` returns ``{"classification": QFL, "bbox_regression":
    GIoU, "bbox_distribution": DFL}`` (weights 1, 2, 0.25 applied; see
    :func:`bmgkd_core.models.gfl_loss.compute_gfl_losses`). ``images`` is a list of ``[3, H, W]``
    float tensors in ``[0, 1]``; each target holds ``boxes`` (float ``[N, 4]`` xyxy in image
    pixels, ``N`` may be 0) and ``labels`` (int64 ``[N]`` in ``1..K``).

    Eval mode: returns per image ``{"boxes": [M, 4] xyxy in original image pixels, "labels": [M]
    int64, "scores": [M]}`` after the score threshold, per-level top-k, class-wise NMS and
    ``detections_per_img``; boxes are mapped back by ``self.transform.postprocess`` and clipped
    to the original image.

    The parts are exposed for distillation: ``self.transform`` → ``self.backbone`` →
    :meth:`forward_head` → :meth:`compute_loss` / :meth:`postprocess_detections`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        min_size: int = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
        reg_max: int = 16,
        num_convs: int = 4,
        atss_topk: int = 9,
        anchor_scale: float = 8.0,
        strides: Sequence[int] = DEFAULT_STRIDES,
        qfl_beta: float = 2.0,
        loss_weights: tuple[float, float, float] = (1.0, 2.0, 0.25),
        dfl_target_eps: float = 0.01,
        head: GFLHead | None = None,
        transform: GeneralizedRCNNTransform | None = None,
    ) -> None:
        """Build the detector; ``head`` and ``transform`` default to the standard ones.

        Args:
            backbone: Module mapping ``[B, 3, H, W]`` to an ordered dict of ``len(strides)`` maps
                with ``backbone.out_channels`` channels (e.g. ``build_fpn_backbone(.., "p3p7")``).
            num_classes: Dataset classes + 1 (background).
            min_size: Shorter side after resizing (``GeneralizedRCNNTransform``).
            max_size: Upper bound of the longer side after resizing.
            image_mean: Normalisation mean; ImageNet's by default.
            image_std: Normalisation std; ImageNet's by default.
            score_thresh: Minimum score of a detection.
            nms_thresh: IoU threshold of the class-wise NMS.
            detections_per_img: Detections kept per image after NMS.
            topk_candidates: Highest-scoring (point, class) pairs kept per level before NMS.
            reg_max: Largest distance bin of the default head.
            num_convs: Convs per tower of the default head.
            atss_topk: ATSS candidates per level and GT.
            anchor_scale: Side of the ATSS anchor of a point, in strides.
            strides: Strides of the backbone's maps for the default head.
            qfl_beta: QFL exponent.
            loss_weights: Weights of QFL, GIoU and DFL.
            dfl_target_eps: DFL targets are clamped to ``[0, reg_max - dfl_target_eps]``.
            head: A prebuilt head (its ``reg_max`` and ``strides`` are then used).
            transform: A prebuilt transform replacing the size/mean/std arguments.

        Raises:
            ConfigError: invalid sizes or a backbone without an integer ``out_channels``.
        """
        super().__init__()
        out_channels = getattr(backbone, "out_channels", None)
        if not isinstance(out_channels, int):
            raise ConfigError("backbone must have an integer attribute out_channels")
        if num_classes < 2 or detections_per_img < 1 or topk_candidates < 1 or atss_topk < 1:
            raise ConfigError(
                f"invalid GFL sizes: num_classes={num_classes}, detections_per_img="
                f"{detections_per_img}, topk_candidates={topk_candidates}, atss_topk={atss_topk}"
            )
        self.backbone = backbone
        if head is None:
            head = GFLHead(
                out_channels, num_classes, strides=strides, reg_max=reg_max, num_convs=num_convs
            )
        if head.num_classes != num_classes:
            raise ConfigError(f"head has {head.num_classes} classes, expected {num_classes}")
        self.head = head
        if transform is None:
            transform = GeneralizedRCNNTransform(
                min_size,
                max_size,
                list(_IMAGENET_MEAN if image_mean is None else image_mean),
                list(_IMAGENET_STD if image_std is None else image_std),
            )
        self.transform = transform
        self.num_classes = num_classes
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates
        self.atss_topk = atss_topk
        self.anchor_scale = anchor_scale
        self.qfl_beta = qfl_beta
        self.loss_weights = loss_weights
        self.dfl_target_eps = dfl_target_eps

    @property
    def reg_max(self) -> int:
        """Largest distance bin of the head."""
        return self.head.reg_max

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in train mode, detections in eval mode (see the class docstring).

        Args:
            images: ``[3, H, W]`` float images in ``[0, 1]``; sizes may differ. Not modified.
            targets: Per image ``boxes`` (float ``[N, 4]`` xyxy pixels) and ``labels`` (int64
                ``[N]`` in ``1..K``); required in train mode, validated whenever given. Not
                modified.

        Returns:
            Train mode: the loss dict. Eval mode: one ``{"boxes", "labels", "scores"}`` per image.

        Raises:
            ValueError: images are not ``[C, H, W]`` tensors, or train mode without targets.
            DataError: a target is invalid (wrong shape or dtype, label out of ``1..K``,
                degenerate or non-finite box); the message names the image index.
        """
        if self.training and targets is None:
            raise ValueError("targets must be given in training mode")
        _check_images(images)
        if targets is not None:
            _check_targets(targets, self.num_classes, num_images=len(images))
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets_t = self.transform(
            list(images), None if targets is None else [dict(t) for t in targets]
        )
        features = list(self.backbone(image_list.tensors).values())
        head_outputs = self.forward_head(features)
        if self.training:
            return self.compute_loss(targets_t, head_outputs, image_list.image_sizes)
        detections = self.postprocess_detections(head_outputs, image_list.image_sizes)
        result: list[dict[str, Tensor]] = self.transform.postprocess(
            detections, image_list.image_sizes, original_sizes
        )
        for detection, size in zip(result, original_sizes, strict=True):
            # Rescaling can overshoot the border by float rounding; clip in original pixels.
            detection["boxes"] = clip_boxes_to_image(detection["boxes"], size)
        return result

    def forward_head(self, features: Sequence[Tensor]) -> GFLHeadOutputs:
        """Run the head on the backbone's maps (fine to coarse); see :class:`GFLHeadOutputs`."""
        outputs: GFLHeadOutputs = self.head(features)
        return outputs

    def decode_boxes(self, head_outputs: GFLHeadOutputs) -> list[Tensor]:
        """Per level, ``[B, H*W, 4]`` float32 xyxy boxes in input (transformed) pixels."""
        return [
            decode_boxes(reg, points, stride, head_outputs.reg_max)
            for reg, points, stride in zip(
                head_outputs.reg_logits_per_level,
                head_outputs.points_per_level,
                head_outputs.strides,
                strict=True,
            )
        ]

    def assign_targets(
        self,
        targets: Sequence[Mapping[str, Any]],
        head_outputs: GFLHeadOutputs,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> GFLTargets:
        """ATSS assignment of every point (levels concatenated) to the transformed targets.

        Args:
            targets: Per image ``boxes``/``labels`` in input (transformed) pixels.
            head_outputs: Output of :meth:`forward_head` (gives points and strides).
            image_sizes: Unpadded ``(H, W)`` per image (``ImageList.image_sizes``); points in the
                padding are ignored. ``None`` treats all points as valid.
        """
        return assign_gfl_targets(
            targets,
            torch.cat(head_outputs.points_per_level),
            head_outputs.point_strides(),
            head_outputs.num_points_per_level,
            image_sizes,
            topk=self.atss_topk,
            anchor_scale=self.anchor_scale,
        )

    def compute_loss(
        self,
        targets: Sequence[Mapping[str, Any]],
        head_outputs: GFLHeadOutputs,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        assignment: GFLTargets | None = None,
    ) -> dict[str, Tensor]:
        """The train-mode loss dict, computed in float32 with autocast disabled.

        Args:
            targets: As for :meth:`assign_targets`; ignored when ``assignment`` is given.
            head_outputs: Output of :meth:`forward_head`.
            image_sizes: As for :meth:`assign_targets`.
            assignment: A precomputed :meth:`assign_targets` result to reuse.

        Returns:
            ``{"classification", "bbox_regression", "bbox_distribution"}`` scalar tensors.
        """
        if assignment is None:
            assignment = self.assign_targets(targets, head_outputs, image_sizes)
        cls_logits, reg_logits, points, strides = head_outputs.concat_levels()
        with torch.autocast(device_type=cls_logits.device.type, enabled=False):
            return compute_gfl_losses(
                cls_logits,
                reg_logits,
                points,
                strides,
                assignment,
                reg_max=head_outputs.reg_max,
                beta=self.qfl_beta,
                dfl_target_eps=self.dfl_target_eps,
                loss_weights=self.loss_weights,
            )

    @torch.no_grad()
    def postprocess_detections(
        self, head_outputs: GFLHeadOutputs, image_sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Detections per image in input (transformed) pixels, before ``transform.postprocess``.

        Per level: scores ``σ(z)`` of classes ``1..K`` above ``score_thresh``, the top
        ``topk_candidates`` (point, class) pairs, their decoded boxes; then all levels: clip to the
        image, drop empty boxes, class-wise NMS, keep ``detections_per_img``.
        """
        detections = []
        for index, image_size in enumerate(image_sizes):
            boxes, scores, labels = [], [], []
            for level in range(len(head_outputs.strides)):
                level_dets = self._select_level(head_outputs, level, index)
                boxes.append(level_dets[0])
                scores.append(level_dets[1])
                labels.append(level_dets[2])
            detections.append(self._merge_levels(boxes, scores, labels, image_size))
        return detections

    def _select_level(
        self, outputs: GFLHeadOutputs, level: int, index: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        cls_logits = outputs.cls_logits_per_level[level][index, :, 1:]  # [HW, K]
        num_fg = cls_logits.shape[-1]
        scores = cls_logits.float().sigmoid().flatten()
        keep = (scores > self.score_thresh).nonzero().squeeze(1)
        scores, order = scores[keep].topk(min(self.topk_candidates, keep.numel()))
        keep = keep[order]
        point_index = keep // num_fg
        labels = keep % num_fg + 1
        reg_logits = outputs.reg_logits_per_level[level][index, point_index]
        points = outputs.points_per_level[level][point_index]
        boxes = decode_boxes(reg_logits, points, outputs.strides[level], outputs.reg_max)
        return boxes, scores, labels

    def _merge_levels(
        self,
        boxes: list[Tensor],
        scores: list[Tensor],
        labels: list[Tensor],
        image_size: tuple[int, int],
    ) -> dict[str, Tensor]:
        all_boxes = clip_boxes_to_image(torch.cat(boxes), tuple(image_size))
        all_scores = torch.cat(scores)
        all_labels = torch.cat(labels)
        sizes = all_boxes[:, 2:] - all_boxes[:, :2]
        nonempty = (sizes > 0).all(dim=1)
        all_boxes, all_scores, all_labels = (
            all_boxes[nonempty],
            all_scores[nonempty],
            all_labels[nonempty],
        )
        keep = batched_nms(all_boxes, all_scores, all_labels, self.nms_thresh)
        keep = keep[: self.detections_per_img]
        return {"boxes": all_boxes[keep], "scores": all_scores[keep], "labels": all_labels[keep]}


def _check_images(images: Sequence[Tensor]) -> None:
    for index, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dim() != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"image at index {index} must be a [C, H, W] tensor, got {shape}")


def _check_targets(targets: Sequence[Mapping[str, Any]], num_classes: int, num_images: int) -> None:
    """Validate targets like torchvision's detectors, plus dtype and label-range checks."""
    if len(targets) != num_images:
        raise DataError(f"got {len(targets)} targets for {num_images} images")
    for index, target in enumerate(targets):
        boxes = target.get("boxes")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise DataError(f"target boxes must be a [N, 4] tensor, got {shape} at index {index}")
        if not boxes.is_floating_point():
            raise DataError(f"target boxes must be floating point, got {boxes.dtype} at {index}")
        labels = target.get("labels")
        if not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1]:
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise DataError(f"target labels must be [{boxes.shape[0]}], got {shape} at {index}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise DataError(f"target labels must be integers, got {labels.dtype} at {index}")
        if labels.numel() and (labels.min() < 1 or labels.max() >= num_classes):
            raise DataError(
                f"target labels must be in 1..{num_classes - 1}, got {labels.tolist()} at {index}"
            )
        bad = ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bad.any():
            box = boxes[bad.nonzero()[0, 0]].tolist()
            raise DataError(
                "All bounding boxes should be finite with positive height and width. "
                f"Found invalid box {box} for target at index {index}."
            )
