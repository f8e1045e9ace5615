"""FPN backbones built by explicit construction from torchvision parts.

Every backbone returns an ``OrderedDict`` of 256-channel maps whose keys and strides depend only on
the detector family, never on the backbone, so any teacher and student of one family pair up level
by level:

- ``"p3p7"`` (RetinaNet, GFL): keys ``"0", "1", "2", "p6", "p7"`` (torchvision's naming, so state
  dicts match its own builders); strides 8, 16, 32, 64, 128, with P6/P7 computed from P5.
- ``"p2p6"`` (Faster R-CNN): keys ``"0".."3", "pool"``; strides 4, 8, 16, 32, 64.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet34, resnet50, resnet101
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    LastLevelMaxPool,
    LastLevelP6P7,
)

from bmgkd_core.errors import CheckpointError, ConfigError

__all__ = ["FPN_CHANNELS", "LevelLayout", "build_fpn_backbone", "freeze_batchnorm"]

FPN_CHANNELS = 256
LevelLayout = Literal["p3p7", "p2p6"]

_RESNETS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
}
# Strides of the C2..C5 outputs we take from each backbone.
_LAYOUT_STRIDES: dict[str, tuple[int, ...]] = {"p3p7": (8, 16, 32), "p2p6": (4, 8, 16, 32)}


def build_fpn_backbone(
    name: str,
    layout: LevelLayout,
    *,
    weights_path: str | Path | None = None,
) -> BackboneWithFPN:
    """Build ``name`` (a key of :data:`bmgkd_core.config.BACKBONES`) with an FPN on top.

    Args:
        name: Backbone name, e.g. ``"resnet18"`` or ``"mobilenet_v3_large"``.
        layout: ``"p3p7"`` for one-stage heads, ``"p2p6"`` for Faster R-CNN.
        weights_path: Optional local ImageNet ``state_dict`` of the classification network. When
            given, it is loaded strictly (the classifier head may be missing), the stem and first
            stage are frozen and BatchNorm layers are frozen (see :func:`freeze_batchnorm`).

    Returns:
        A ``BackboneWithFPN`` whose ``out_channels`` is 256. BatchNorm stays ``nn.BatchNorm2d`` so
        the state dict matches torchvision's builders called with ``weights=None``.

    Raises:
        ConfigError: unknown backbone name.
        CheckpointError: the weights file cannot be read or does not fit.
    """
    strides = _LAYOUT_STRIDES[layout]
    extra: ExtraFPNBlock = (
        LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS) if layout == "p3p7" else LastLevelMaxPool()
    )
    if name in _RESNETS:
        net = _RESNETS[name](weights=None)
        _maybe_load_backbone_weights(net, weights_path)
        layer_of_stride = {4: "layer1", 8: "layer2", 16: "layer3", 32: "layer4"}
        return_layers = {layer_of_stride[s]: str(i) for i, s in enumerate(strides)}
        in_channels = [_resnet_out_channels(net, layer_of_stride[s]) for s in strides]
        body: nn.Module = net
        frozen_prefixes: tuple[str, ...] = ("conv1", "bn1", "layer1")
    elif name == "mobilenet_v3_large":
        net = mobilenet_v3_large(weights=None)
        _maybe_load_backbone_weights(net, weights_path)
        features: nn.Sequential = net.features
        index_of_stride = _mobilenet_stage_indices(features)
        return_layers = {str(index_of_stride[s]): str(i) for i, s in enumerate(strides)}
        in_channels = [_last_out_channels(features[index_of_stride[s]]) for s in strides]
        body = features
        frozen_prefixes = ("0.", "1.")
    else:
        raise ConfigError(
            f"unknown backbone {name!r}; choose one of: resnet18, resnet34, "
            "resnet50, resnet101, mobilenet_v3_large"
        )
    if weights_path is not None:
        for pname, param in body.named_parameters():
            if pname.startswith(frozen_prefixes):
                param.requires_grad_(False)
        freeze_batchnorm(body)
    return BackboneWithFPN(
        body, return_layers, in_channels, FPN_CHANNELS, extra_blocks=extra, norm_layer=None
    )


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm of ``module`` in eval mode with frozen affine parameters.

    ``Module.train()`` switches BatchNorm back to training mode, so the training loop calls this
    again after each ``train()`` for backbones loaded from ImageNet weights (mmdet ``norm_eval``).
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def _resnet_out_channels(net: nn.Module, layer: str) -> int:
    block = getattr(net, layer)[-1]
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return int(last_bn.num_features)


def _last_out_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


def _mobilenet_stage_indices(features: nn.Sequential) -> dict[int, int]:
    """Map output stride -> index of the last block of ``features`` at that stride."""
    index_of_stride: dict[int, int] = {}
    stride = 1
    for i, block in enumerate(features):
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        for conv in convs:
            s = conv.stride[0] if isinstance(conv.stride, tuple) else conv.stride
            stride *= int(s)
        index_of_stride[stride] = i
    return index_of_stride


def _maybe_load_backbone_weights(net: nn.Module, weights_path: str | Path | None) -> None:
    if weights_path is None:
        return
    from bmgkd_core.train.checkpoint import load_state_dict_file

    state = load_state_dict_file(weights_path)
    head_prefixes = ("fc.", "classifier.")
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head_prefixes)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{weights_path}: backbone weights do not fit {type(net).__name__}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    if not any(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{weights_path}: no tensors in the state dict")
