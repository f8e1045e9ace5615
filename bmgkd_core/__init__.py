"""bmgkd engine: detector training, evaluation and (BMGKD) distillation, as a library.

The public names are exported lazily (PEP 562) so that ``import bmgkd_core.config`` never loads
torch: the API process imports only the config models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "DistillConfig",
    "RunResult",
    "build_detector",
    "evaluate",
    "fit",
    "load_dataset",
    "load_student",
    "validate_dataset",
]

_EXPORTS: dict[str, tuple[str, str]] = {
    "DistillConfig": ("bmgkd_core.config", "DistillConfig"),
    "RunResult": ("bmgkd_core.train.loop", "RunResult"),
    "build_detector": ("bmgkd_core.models", "build_detector"),
    "evaluate": ("bmgkd_core.train.evaluate", "evaluate"),
    "fit": ("bmgkd_core.train.loop", "fit"),
    "load_dataset": ("bmgkd_core.data", "load_dataset"),
    "load_student": ("bmgkd_core.train.checkpoint", "load_detector"),
    "validate_dataset": ("bmgkd_core.data", "validate_dataset"),
}

if TYPE_CHECKING:
    from bmgkd_core.config import DistillConfig
    from bmgkd_core.data import load_dataset, validate_dataset
    from bmgkd_core.models import build_detector
    from bmgkd_core.train.checkpoint import load_detector as load_student
    from bmgkd_core.train.evaluate import evaluate
    from bmgkd_core.train.loop import RunResult, fit


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'bmgkd_core' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
