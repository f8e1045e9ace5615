"""The torchvision detector contract, for every architecture build_detector knows."""

from __future__ import annotations

import math

import pytest
import torch

from bmgkd_core.config import ARCHITECTURES
from bmgkd_core.errors import ConfigError
from bmgkd_core.models import build_detector

BOX_LOSS_KEYS = {"bbox_regression", "loss_box_reg", "loss_rpn_box_reg", "bbox_distribution"}


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 48, 64, generator=g)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([2])},
        {
            "boxes": torch.tensor([[10.0, 8.0, 30.0, 40.0], [32.0, 4.0, 60.0, 20.0]]),
            "labels": torch.tensor([1, 3]),
        },
    ]
    return images, targets


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_detector_train_and_eval_follow_torchvision_contract(arch: str) -> None:
    torch.manual_seed(0)
    model = build_detector(arch, num_classes=4, image_size=64)
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert isinstance(losses, dict)
    assert losses
    total = sum(losses.values())
    assert math.isfinite(float(total.detach()))
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, img in zip(out, images, strict=True):
        assert set(det) >= {"boxes", "labels", "scores"}
        assert det["boxes"].shape[1:] == (4,)
        assert det["boxes"].shape[0] == det["scores"].shape[0] == det["labels"].shape[0]
        assert det["boxes"].shape[0] <= 100
        if det["boxes"].numel():
            assert float(det["boxes"][:, 2].max()) <= img.shape[2] + 1e-3
            assert float(det["boxes"][:, 3].max()) <= img.shape[1] + 1e-3


@pytest.mark.parametrize(
    "arch", ["retinanet_resnet18_fpn", "fasterrcnn_resnet18_fpn", "gfl_resnet18_fpn"]
)
def test_detector_image_without_boxes_zero_box_loss_and_finite(arch: str) -> None:
    torch.manual_seed(0)
    model = build_detector(arch, num_classes=3, image_size=64).train()
    images = [torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]
    losses = model(images, targets)
    for name, value in losses.items():
        assert torch.isfinite(value), name
        if name in BOX_LOSS_KEYS:
            assert float(value.detach()) == 0.0, name


@pytest.mark.parametrize("arch", ["retinanet_resnet18_fpn", "fasterrcnn_mobilenet_v3_large_fpn"])
def test_detector_forward_inputs_not_mutated(arch: str) -> None:
    model = build_detector(arch, num_classes=4, image_size=96).train()
    images, targets = _batch()
    images_before = [i.clone() for i in images]
    targets_before = [{k: v.clone() for k, v in t.items()} for t in targets]
    model(images, targets)
    model.eval()
    with torch.no_grad():
        model(images)
    for a, b in zip(images, images_before, strict=True):
        assert torch.equal(a, b)
    for t, tb in zip(targets, targets_before, strict=True):
        assert t.keys() == tb.keys()
        for k in t:
            assert torch.equal(t[k], tb[k])


def test_detector_image_size_from_config_not_torchvision_default() -> None:
    model = build_detector("retinanet_resnet18_fpn", num_classes=2, image_size=96)
    transform = model.transform
    assert tuple(transform.min_size) == (96,)
    assert transform.max_size == 96
    model.eval()
    with torch.no_grad():
        batch, _ = transform([torch.rand(3, 300, 200)])
    assert max(batch.image_sizes[0]) == 96


def test_detector_invalid_target_raises() -> None:
    model = build_detector("retinanet_resnet18_fpn", num_classes=2, image_size=64).train()
    bad = [{"boxes": torch.tensor([[10.0, 10.0, 5.0, 20.0]]), "labels": torch.tensor([1])}]
    # torchvision raises AssertionError through torch._assert; GFL raises ValueError.
    with pytest.raises((ValueError, AssertionError), match=r"degenerate|positive"):
        model([torch.rand(3, 64, 64)], bad)


def test_build_detector_unknown_arch_raises_config_error_listing_choices() -> None:
    with pytest.raises(ConfigError, match="retinanet_resnet18_fpn"):
        build_detector("yolo_resnet18_fpn", num_classes=2)


def test_box_batch_size_sets_faster_rcnn_sampler_and_keeps_state_dict_keys() -> None:
    small = build_detector("fasterrcnn_resnet18_fpn", 3, image_size=64, box_batch_size_per_image=64)
    stock = build_detector("fasterrcnn_resnet18_fpn", 3, image_size=64)
    assert small.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert stock.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert small.state_dict().keys() == stock.state_dict().keys()
    # other families accept and ignore it
    build_detector("retinanet_resnet18_fpn", 3, image_size=64, box_batch_size_per_image=64)
    with pytest.raises(ConfigError, match="box_batch_size_per_image"):
        build_detector("fasterrcnn_resnet18_fpn", 3, box_batch_size_per_image=0)


def test_box_coordinates_stay_fp32_under_bf16_autocast() -> None:
    """bf16 head outputs would make torchvision decode boxes in bf16: whole pixels above 128."""
    torch.manual_seed(0)
    model = build_detector("fasterrcnn_resnet18_fpn", 3, image_size=320).eval()
    images = [torch.rand(3, 320, 320)]

    def proposals() -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            image_list, _ = model.transform(images)
            features = model.backbone(image_list.tensors)
            boxes, _ = model.rpn(image_list, features)
        return boxes[0]

    kept = proposals()
    assert kept.dtype == torch.float32
    big = kept[kept > 130]
    assert big.numel() > 0 and (big != big.round()).any()
    model.rpn.head._forward_hooks.clear()  # the control: without the hook, bf16 rounding shows
    rounded = proposals()
    big = rounded[rounded > 130].float()
    assert rounded.dtype == torch.bfloat16 and torch.equal(big, big.round())

    retina = build_detector("retinanet_resnet18_fpn", 3, image_size=64)
    feats = [torch.rand(1, 256, 8, 8), torch.rand(1, 256, 4, 4)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = retina.head(feats)
        logits, deltas = model.roi_heads.box_predictor(torch.rand(4, 1024))
    assert {v.dtype for v in out.values()} == {torch.float32}
    assert logits.dtype == deltas.dtype == torch.float32
