"""Throughput of `bmgkd train`'s loop against a bare torchvision loop, side by side in one run.

Both loops train the same model (same seed and init), on the same data, loader, batch size,
optimizer, image size and precision. Rounds alternate (bare, bmgkd, bare, bmgkd, ...) so machine
noise hits both; each round times `--steps` steps after `--warmup` untimed ones, and the median
of the rounds is reported. Prints a table and the ratio, writes JSON + Markdown to bench/results/.

    python bench/train_throughput.py --data ../shared/datasets/raccoon \
        --model retinanet_resnet18_fpn --image-size 320 --batch-size 4 --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bmgkd_core.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, TrainConfig
from bmgkd_core.data import build_loader, build_transforms, load_dataset
from bmgkd_core.models import build_detector
from bmgkd_core.train.callbacks import Callback, TrainState
from bmgkd_core.train.loop import fit, resolve_device
from bmgkd_core.train.run import amp_dtype_for

RESULTS = Path(__file__).resolve().parent / "results"


def bare_loop(args: argparse.Namespace, device: torch.device, steps: int) -> list[float]:
    """The 20-line loop a torchvision user would write; returns per-step end times."""
    ds = load_dataset(
        args.data, "train", transforms=build_transforms(train=True, image_size=args.image_size)
    )
    loader, _ = build_loader(
        ds,
        batch_size=args.batch_size,
        train=True,
        num_workers=args.workers,
        seed=0,
        device_is_cuda=device.type == "cuda",
    )
    torch.manual_seed(0)
    model = (
        build_detector(args.model, len(ds.label_map.names) + 1, image_size=args.image_size)
        .to(device)
        .train()
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    dtype = amp_dtype_for(device, args.amp)
    times: list[float] = []
    while len(times) < steps:
        for images, targets in loader:
            images = [i.to(device, non_blocking=True) for i in images]
            targets = [
                {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()}
                for t in targets
            ]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = sum(model(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            if len(times) >= steps:
                break
    return times


class _StepClock(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, state: TrainState) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def bmgkd_loop(args: argparse.Namespace, steps: int) -> list[float]:
    cfg = DistillConfig(
        data=DataConfig(root=args.data, image_size=args.image_size, num_workers=args.workers),
        model=ModelConfig(arch=args.model),
        optim=OptimConfig(lr=0.01, warmup_steps=0),
        train=TrainConfig(
            epochs=1000,
            max_steps=steps,
            batch_size=args.batch_size,
            device=args.device,
            amp=args.amp,
            eval_every_epochs=0,
            seed=0,
            final_eval=False,
        ),
    )
    clock = _StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        fit(cfg, workdir=tmp, callbacks=[clock])
    return clock.times


def images_per_s(times: list[float], warmup: int, batch: int) -> float:
    timed = times[warmup:]
    return (len(timed) - 1) * batch / (timed[-1] - timed[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="retinanet_resnet18_fpn")
    p.add_argument("--image-size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tag", default=None, help="results file name (default: device and model)")
    args = p.parse_args()
    device = resolve_device(args.device)
    total = args.steps + args.warmup + 1
    bare, ours = [], []
    for r in range(args.rounds):
        bare.append(images_per_s(bare_loop(args, device, total), args.warmup, args.batch_size))
        ours.append(images_per_s(bmgkd_loop(args, total), args.warmup, args.batch_size))
        print(f"round {r + 1}: bare {bare[-1]:.2f} img/s, bmgkd {ours[-1]:.2f} img/s", flush=True)
    result = _summary(args, device, bare, ours)
    _write(result, args.tag or f"train_throughput_{device.type}_{args.model}_{args.image_size}")


def _summary(
    args: argparse.Namespace, device: torch.device, bare: list[float], ours: list[float]
) -> dict[str, Any]:
    b, o = statistics.median(bare), statistics.median(ours)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "device": f"{device.type} ({name}, {torch.get_num_threads()} threads)",
        "amp": bool(amp_dtype_for(device, args.amp)),
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "bare_images_per_s": bare,
        "bmgkd_images_per_s": ours,
        "bare_median": b,
        "bmgkd_median": o,
        "ratio": o / b,
        "torch": torch.__version__,
    }


def _write(result: dict[str, Any], tag: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    line = (
        f"| {result['model']} | {result['image_size']} | {result['batch_size']} | "
        f"{result['device']} | {result['amp']} | {result['bare_median']:.2f} | "
        f"{result['bmgkd_median']:.2f} | **{result['ratio']:.3f}** |"
    )
    (RESULTS / f"{tag}.md").write_text(line + "\n")
    print("| model | px | batch | device | amp | bare img/s | bmgkd img/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print(line)


if __name__ == "__main__":
    main()
