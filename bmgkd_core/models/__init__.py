"""Detector construction: :func:`build_detector` and the FPN backbones."""

from bmgkd_core.models.backbones import build_fpn_backbone, freeze_batchnorm
from bmgkd_core.models.detectors import build_detector, split_arch
from bmgkd_core.models.gfl import GFL

__all__ = ["GFL", "build_detector", "build_fpn_backbone", "freeze_batchnorm", "split_arch"]
