"""``evaluate``: score a saved ``model.pt`` on a dataset split with COCO metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bmgkd_core.data import build_loader, build_transforms, load_dataset
from bmgkd_core.errors import DataError
from bmgkd_core.eval import evaluate_detector
from bmgkd_core.train.checkpoint import load_detector
from bmgkd_core.train.loop import resolve_device
from bmgkd_core.train.run import amp_dtype_for, build_evaluator

__all__ = ["evaluate"]


def evaluate(
    checkpoint: str | Path,
    *,
    data: str | Path,
    split: str = "val",
    data_format: str = "auto",
    image_size: int | None = None,
    device: str = "auto",
    batch_size: int = 4,
    num_workers: int = 2,
    amp: bool = True,
    cpu_amp: bool = False,
    predictions_path: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a ``model.pt``) on ``data``/``split``.

    ``amp`` enables CUDA autocast; ``cpu_amp`` adds bf16 autocast on the CPU (as
    ``train.cpu_amp``: the box decoding stays fp32).

    Returns:
        ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}}`` in percent.

    Raises:
        CheckpointError: unreadable checkpoint.
        DataError: unreadable data, or its classes differ from the checkpoint's.
    """
    dev = resolve_device(device)
    model, meta = load_detector(checkpoint, image_size=image_size)
    dataset = load_dataset(
        data,
        split,
        format=data_format,  # type: ignore[arg-type]
        transforms=build_transforms(train=False, image_size=image_size or meta.image_size),
    )
    names = tuple(dataset.label_map.names)
    if names != meta.class_names:
        raise DataError(
            f"{data}: classes {list(names)[:10]} differ from the checkpoint's "
            f"{list(meta.class_names)[:10]}"
        )
    loader, _ = build_loader(
        dataset,
        batch_size=batch_size,
        train=False,
        num_workers=num_workers,
        seed=0,
        device_is_cuda=dev.type == "cuda",
    )
    evaluator = build_evaluator(dataset)
    bbox = evaluate_detector(
        model.to(dev), loader, evaluator, device=dev, amp_dtype=amp_dtype_for(dev, amp, cpu=cpu_amp)
    )
    if predictions_path is not None:
        evaluator.write_predictions(predictions_path)
    return {"bbox": bbox}
