"""Checkpoint files: the only place that calls ``torch.load`` (always ``weights_only=True``).

Two files, two save functions (the teacher can never leak into a student file):

- ``model.pt``: ``{"state_dict", "arch", "num_classes", "class_names", "image_size",
  "bmgkd_version"}``. ``num_classes`` counts background (torchvision's convention) and
  ``class_names[label - 1]`` names label ``label``. It loads into the plain torchvision model.
- ``resume.pt``: model, optimizer, scheduler, scaler, RNG states, ``epoch``/``step`` and the run
  config as a JSON string.

Writes are atomic: ``torch.save`` to a temporary file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from bmgkd_core.errors import CheckpointError

__all__ = [
    "MODEL_FILE",
    "RESUME_FILE",
    "ModelFile",
    "capture_rng_state",
    "load_detector",
    "load_model_file",
    "load_resume",
    "load_state_dict_file",
    "restore_rng_state",
    "save_model",
    "save_resume",
]

MODEL_FILE = "model.pt"
RESUME_FILE = "resume.pt"
_VERSION = "0.1.0"


@dataclass(frozen=True)
class ModelFile:
    """The contents of a ``model.pt``."""

    state_dict: dict[str, torch.Tensor]
    arch: str
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int


def _atomic_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({exc})") from exc


def save_model(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    class_names: Sequence[str],
    image_size: int,
) -> None:
    """Write a student-only ``model.pt`` (tensors and primitives only)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _atomic_save(
        {
            "state_dict": state,
            "arch": arch,
            "num_classes": int(num_classes),
            "class_names": list(class_names),
            "image_size": int(image_size),
            "bmgkd_version": _VERSION,
        },
        Path(path),
    )


def load_model_file(path: str | Path) -> ModelFile:
    """Read a ``model.pt`` written by :func:`save_model`.

    Raises:
        CheckpointError: unreadable file or missing fields.
    """
    obj = _load(path)
    need = ("state_dict", "arch", "num_classes", "class_names")
    if not isinstance(obj, Mapping) or any(k not in obj for k in need):
        have = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: not a bmgkd model file; need keys {need}, got {have}")
    return ModelFile(
        state_dict=dict(obj["state_dict"]),
        arch=str(obj["arch"]),
        num_classes=int(obj["num_classes"]),
        class_names=tuple(str(n) for n in obj["class_names"]),
        image_size=int(obj.get("image_size", 512)),
    )


def load_detector(
    path: str | Path, *, image_size: int | None = None
) -> tuple[nn.Module, ModelFile]:
    """Build the detector named in ``model.pt`` and load its weights strictly.

    Args:
        path: A ``model.pt``.
        image_size: Override the image size the model's transform resizes to.

    Returns:
        The model (eval mode, CPU) and the file's metadata.
    """
    from bmgkd_core.models import build_detector

    mf = load_model_file(path)
    model = build_detector(mf.arch, mf.num_classes, image_size=image_size or mf.image_size)
    load_strict(model, mf.state_dict, source=str(path))
    return model.eval(), mf


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state_dict`` into ``model`` strictly, naming missing/unexpected/mis-shaped keys.

    Raises:
        CheckpointError: the keys or shapes do not match.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source}: weights do not match the model: "
            f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected "
            f"{unexpected[:5]}, {len(shapes)} shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(state_dict, strict=True)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain ``state_dict`` (or a dict holding one under ``"state_dict"``/``"model"``)."""
    obj = _load(path)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return {str(k): v for k, v in obj.items()}


def capture_rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy and torch (CPU and every CUDA device), as tensors/primitives."""
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "python": _python_state_to_primitives(random.getstate()),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_s = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_s["keys"].numpy().astype(np.uint32),
            np_s["pos"],
            np_s["has_gauss"],
            np_s["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_primitives(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def save_resume(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``resume.pt`` atomically; ``payload`` must hold only tensors and primitives."""
    _atomic_save(dict(payload), Path(path))


def load_resume(path: str | Path) -> dict[str, Any]:
    """Read ``resume.pt`` (``weights_only=True``).

    Raises:
        CheckpointError: unreadable file or not a resume checkpoint.
    """
    obj = _load(path)
    if not isinstance(obj, Mapping) or "model" not in obj or "step" not in obj:
        raise CheckpointError(f"{path}: not a bmgkd resume checkpoint")
    return dict(obj)
