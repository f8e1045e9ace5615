"""Typed errors raised by the engine.

Every error the engine raises on purpose derives from :class:`BmgkdError`, so adapters (CLI,
worker) can map them to exit codes or job states without catching unrelated exceptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BmgkdError",
    "Cancelled",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DivergenceError",
]


class BmgkdError(Exception):
    """Base class of all engine errors."""


class ConfigError(BmgkdError, ValueError):
    """A configuration value is invalid (unknown architecture, bad path, bad option)."""


class DataError(BmgkdError, ValueError):
    """A dataset is unreadable or invalid; the message names the file and record."""


class CheckpointError(BmgkdError, ValueError):
    """A checkpoint file is missing, unreadable or does not match the model."""


class DivergenceError(BmgkdError, FloatingPointError):
    """A loss became non-finite.

    Attributes:
        losses: The loss terms of the failing step, as Python floats.
        step: The global step at which the loss diverged.
    """

    def __init__(self, message: str, *, losses: Mapping[str, float], step: int) -> None:
        super().__init__(message)
        self.losses: dict[str, float] = dict(losses)
        self.step = step

    def __reduce__(self) -> tuple[Any, ...]:  # keep picklable across processes
        return (_rebuild_divergence, (str(self), self.losses, self.step))


def _rebuild_divergence(message: str, losses: dict[str, float], step: int) -> DivergenceError:
    return DivergenceError(message, losses=losses, step=step)


class Cancelled(BmgkdError):
    """Training stopped because a callback asked for it; a resume checkpoint was written."""
