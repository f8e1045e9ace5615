"""``build_detector``: an explicit table from architecture name to torchvision construction.

Label convention for every family: dataset classes are labels ``1..K`` and 0 is background, so
the ``num_classes`` passed to the torchvision constructors is ``K + 1`` (as torchvision's own COCO
models do with 91). RetinaNet and GFL then carry one logit that is never positive; it costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, RetinaNet

from bmgkd_core.config import ARCHITECTURES
from bmgkd_core.errors import ConfigError
from bmgkd_core.models.backbones import build_fpn_backbone

__all__ = ["build_detector", "split_arch"]

_DETECTIONS_PER_IMAGE = 100  # COCO's maxDets; also what torchvision's Faster R-CNN keeps


def split_arch(arch: str) -> tuple[str, str]:
    """Split ``"retinanet_resnet18_fpn"`` into ``("retinanet", "resnet18")``.

    Raises:
        ConfigError: ``arch`` is not a supported architecture.
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}"
        )
    family, _, rest = arch.partition("_")
    return family, rest.removesuffix("_fpn")


def build_detector(
    arch: str,
    num_classes: int,
    *,
    image_size: int = 512,
    backbone_weights: str | Path | None = None,
    box_batch_size_per_image: int = 512,
) -> nn.Module:
    """Build a detector with random weights (or a local ImageNet backbone).

    Args:
        arch: ``<family>_<backbone>_fpn`` with family ``fasterrcnn``, ``retinanet`` or ``gfl``.
        num_classes: Number of model classes **including background** (dataset classes + 1).
        image_size: Longer image side used by the model's own transform (min and max size both
            set to it, so torchvision's 800/1333 default never applies).
        backbone_weights: Optional local path of an ImageNet state dict for the backbone.
        box_batch_size_per_image: RoIs sampled per training image by the Faster R-CNN box
            head (a training setting: the weights do not depend on it); other families ignore it.

    Returns:
        A torchvision-contract detector: ``model(images, targets)`` returns a loss dict in train
        mode and a list of ``{"boxes", "labels", "scores"}`` (xyxy, input-image pixels) in eval
        mode.

    Raises:
        ConfigError: unknown architecture or ``num_classes < 2``.
    """
    family, backbone_name = split_arch(arch)
    if num_classes < 2:
        raise ConfigError(f"num_classes counts background and must be >= 2, got {num_classes}")
    if box_batch_size_per_image < 1:
        raise ConfigError(f"box_batch_size_per_image must be >= 1, got {box_batch_size_per_image}")
    if family == "fasterrcnn":
        return _build_fasterrcnn(
            backbone_name, num_classes, image_size, backbone_weights, box_batch_size_per_image
        )
    builder = _FAMILIES[family]
    model: nn.Module = builder(backbone_name, num_classes, image_size, backbone_weights)
    return model


def fp32_outputs(module: nn.Module) -> None:
    """Make ``module`` return float32 tensors when it runs under autocast (bf16/fp16).

    torchvision's box coder decodes in the dtype of the head's output and casts the anchors or
    proposals to it (``BoxCoder.decode_single``): in bf16 (8-bit mantissa) that rounds box
    coordinates to 1 px between 128 and 256 and to 2 px above, for the RPN proposals, the RoI
    targets and the final detections. Casting the head outputs back to float32 keeps the
    heavy convolutions in low precision and every box computation in float32. A forward hook:
    no parameters or state-dict keys change, and outside autocast it is a no-op.
    """
    module.register_forward_hook(_to_fp32_hook)


def _to_fp32_hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
    return _to_fp32(output)


def _to_fp32(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_fp32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_fp32(v) for v in value)
    return value


def _build_fasterrcnn(
    backbone: str,
    num_classes: int,
    size: int,
    weights: str | Path | None,
    box_batch_size_per_image: int = 512,
) -> nn.Module:
    model: nn.Module = FasterRCNN(
        build_fpn_backbone(backbone, "p2p6", weights_path=weights),
        num_classes=num_classes,
        min_size=size,
        max_size=size,
        box_detections_per_img=_DETECTIONS_PER_IMAGE,
        box_batch_size_per_image=box_batch_size_per_image,
    )
    fp32_outputs(model.get_submodule("rpn.head"))
    fp32_outputs(model.get_submodule("roi_heads.box_predictor"))
    return model


def _build_retinanet(
    backbone: str, num_classes: int, size: int, weights: str | Path | None
) -> nn.Module:
    model: nn.Module = RetinaNet(
        build_fpn_backbone(backbone, "p3p7", weights_path=weights),
        num_classes=num_classes,
        min_size=size,
        max_size=size,
        detections_per_img=_DETECTIONS_PER_IMAGE,
    )
    fp32_outputs(model.get_submodule("head"))
    return model


def _build_gfl(backbone: str, num_classes: int, size: int, weights: str | Path | None) -> nn.Module:
    from bmgkd_core.models.gfl import GFL

    return GFL(
        build_fpn_backbone(backbone, "p3p7", weights_path=weights),
        num_classes=num_classes,
        min_size=size,
        max_size=size,
        detections_per_img=_DETECTIONS_PER_IMAGE,
    )


_FAMILIES: dict[str, Callable[[str, int, int, str | Path | None], nn.Module]] = {
    "fasterrcnn": _build_fasterrcnn,
    "retinanet": _build_retinanet,
    "gfl": _build_gfl,
}
