"""The callback contract between the training loop and its host (CLI, worker, tests).

Follows detectron2's HookBase: the loop calls these in order and never knows who listens.
``on_train_end`` runs in ``finally`` with the error (or ``None``). ``should_stop`` is polled after
each step; returning ``True`` makes the loop write ``resume.pt`` and raise
:class:`~bmgkd_core.errors.Cancelled`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Callback", "TrainState"]


@dataclass
class TrainState:
    """What the loop shares with callbacks after every step.

    ``step`` counts finished optimizer steps over the whole run; ``total_steps`` is the planned
    number. ``losses`` holds the last step's terms (``task.*``/``distill.*``) as floats.
    """

    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    epochs: int = 0
    batch_size: int = 1
    lr: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    images_per_s: float = 0.0
    eta_s: float | None = None
    metrics: dict[str, Any] | None = None
    workdir: str = ""


class Callback:
    """Base class with no-op hooks; subclass and override what you need."""

    def on_train_start(self, state: TrainState) -> None:
        """Called once before the first step (also after a resume)."""

    def on_step_end(self, state: TrainState) -> None:
        """Called after every optimizer step."""

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, Any] | None) -> None:
        """Called after each epoch, with the evaluation metrics when one ran."""

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        """Called in ``finally``: ``error`` is the exception that ended training, if any."""

    def should_stop(self) -> bool:
        """Return ``True`` to stop cooperatively after the current step."""
        return False
