"""model.pt loads with weights_only=True into plain torchvision models; bad files fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection import FasterRCNN, RetinaNet, retinanet_resnet50_fpn
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from bmgkd_core.errors import CheckpointError
from bmgkd_core.models import build_detector
from bmgkd_core.train.checkpoint import (
    capture_rng_state,
    load_detector,
    load_model_file,
    load_resume,
    restore_rng_state,
    save_model,
    save_resume,
)


def _save(tmp_path: Path, arch: str, num_classes: int = 3) -> tuple[Path, nn.Module]:
    model = build_detector(arch, num_classes, image_size=64)
    path = tmp_path / "model.pt"
    save_model(
        path, model, arch=arch, num_classes=num_classes, class_names=["a", "b"], image_size=64
    )
    return path, model


def _plain_load(plain: nn.Module, path: Path, model: nn.Module) -> None:
    ckpt = torch.load(path, weights_only=True)  # exactly what a user without bmgkd would do
    plain.load_state_dict(ckpt["state_dict"], strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(plain.state_dict()[k], v), k


def test_model_file_resnet50_loads_into_torchvision_builder(tmp_path: Path) -> None:
    path, model = _save(tmp_path, "retinanet_resnet50_fpn")
    plain = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    _plain_load(plain, path, model)


def test_model_file_resnet18_retinanet_loads_into_plain_torchvision(tmp_path: Path) -> None:
    path, model = _save(tmp_path, "retinanet_resnet18_fpn")
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        norm_layer=nn.BatchNorm2d,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    _plain_load(RetinaNet(backbone, num_classes=3), path, model)


def test_model_file_mobilenet_fasterrcnn_loads_into_plain_torchvision(tmp_path: Path) -> None:
    path, model = _save(tmp_path, "fasterrcnn_mobilenet_v3_large_fpn")
    features = mobilenet_v3_large(weights=None).features
    backbone = BackboneWithFPN(
        features, {"3": "0", "6": "1", "12": "2", "16": "3"}, [24, 40, 112, 960], 256
    )
    _plain_load(FasterRCNN(backbone, num_classes=3), path, model)


def test_model_file_has_metadata_and_no_optimizer_state(tmp_path: Path) -> None:
    path, _ = _save(tmp_path, "fasterrcnn_resnet18_fpn")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {
        "state_dict",
        "arch",
        "num_classes",
        "class_names",
        "image_size",
        "bmgkd_version",
    }
    mf = load_model_file(path)
    assert (mf.arch, mf.num_classes, mf.class_names) == ("fasterrcnn_resnet18_fpn", 3, ("a", "b"))
    model, _ = load_detector(path)
    assert not model.training


def test_load_model_file_garbage_raises_checkpoint_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        load_model_file(bad)
    with pytest.raises(CheckpointError, match="no such"):
        load_model_file(tmp_path / "missing.pt")


def test_load_detector_wrong_shapes_names_keys(tmp_path: Path) -> None:
    path, _ = _save(tmp_path, "retinanet_resnet18_fpn", num_classes=3)
    raw = torch.load(path, weights_only=True)
    raw["num_classes"] = 5
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches.*cls_logits"):
        load_detector(path)


def test_resume_payload_round_trips_weights_only(tmp_path: Path) -> None:
    rng = capture_rng_state()
    expected = torch.rand(3)
    save_resume(
        tmp_path / "resume.pt",
        {"model": {"w": torch.ones(2)}, "step": 7, "rng": rng, "config": "{}"},
    )
    assert not list(tmp_path.glob("*.tmp"))
    loaded = load_resume(tmp_path / "resume.pt")
    assert loaded["step"] == 7
    restore_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected)
