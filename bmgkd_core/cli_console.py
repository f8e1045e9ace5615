"""Console side of the ``bmgkd`` command line: exit codes, progress bar and metric lines.

Shared by the command modules (``cli_run``, ``cli_tools``) and ``cli``; it imports none of them,
so the command modules never import ``cli`` back.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Mapping
from types import FrameType
from typing import Any

from bmgkd_core.train.callbacks import Callback, TrainState

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def format_metrics(bbox: Mapping[str, Any]) -> str:
    """One line with the COCO box metrics, ``n/a`` where a metric is undefined."""
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    cells = [f"{k}={bbox[k]:.2f}" if bbox.get(k) is not None else f"{k}=n/a" for k in keys]
    return "bbox: " + "  ".join(cells)


class ConsoleCallback(Callback):
    """A tqdm progress bar with the loss terms and ETA; Ctrl-C stops after the current step."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self._bar: Any = None
        self._stop = False

    def catch_interrupt(self) -> _InterruptGuard:
        """Context manager: first Ctrl-C asks the loop to stop cleanly, the second aborts."""
        return _InterruptGuard(self)

    def request_stop(self) -> None:
        """Ask the loop to stop after the current step."""
        self._stop = True

    def should_stop(self) -> bool:  # noqa: D102
        return self._stop

    def on_train_start(self, state: TrainState) -> None:  # noqa: D102
        if self.quiet:
            return
        from tqdm import tqdm

        self._bar = tqdm(
            total=state.total_steps,
            initial=state.step,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def on_step_end(self, state: TrainState) -> None:  # noqa: D102
        if self._bar is None:
            return
        self._bar.update(state.step - self._bar.n)
        shown = {k.removeprefix("task."): f"{v:.3f}" for k, v in state.losses.items()}
        self._bar.set_postfix(epoch=state.epoch + 1, lr=f"{state.lr:.2e}", **shown, refresh=False)

    def on_epoch_end(self, state: TrainState, metrics: Mapping[str, Any] | None) -> None:  # noqa: D102
        if metrics is not None and self._bar is not None:
            self._bar.write(f"epoch {state.epoch + 1}: {format_metrics(metrics['bbox'])}")

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:  # noqa: D102
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _InterruptGuard:
    def __init__(self, callback: ConsoleCallback) -> None:
        self.callback = callback
        self._previous: Any = None

    def __enter__(self) -> _InterruptGuard:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.callback.should_stop():
            raise KeyboardInterrupt
        print("\nbmgkd: stopping after this step (Ctrl-C again to abort)", file=sys.stderr)
        self.callback.request_stop()
