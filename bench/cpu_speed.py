"""CPU training speed of the CPU options, side by side in one run.

Variants: fp32 (the reference), bf16 autocast (`train.cpu_amp`) and, for Faster R-CNN, 128
instead of 512 sampled RoIs per image (`model.box_batch_size_per_image`). For each model the
variants alternate round by round through the real `bmgkd train` loop (`fit`) with the same
seed, data, batch and image size; each round times `--steps` steps after `--warmup` untimed ones
and the median of the rounds is reported as a ratio to fp32, with the loss after the last step
(a crude "it still trains" check, not a quality measurement). bf16 pays off on CPUs with AMX or
AVX512-BF16; on others PyTorch emulates it and the ratio can drop below 1, which is why
`cpu_amp` is off by default.

    python bench/cpu_speed.py --data ../shared/datasets/raccoon --image-size 192 --batch-size 4 \
        --models retinanet_resnet18_fpn gfl_resnet50_fpn fasterrcnn_resnet18_fpn
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from _host import bf16_flags
from train_throughput import _StepClock, images_per_s

from bmgkd_core.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, TrainConfig
from bmgkd_core.train.loop import fit

RESULTS = Path(__file__).resolve().parent / "results"


VARIANTS = {
    "fp32": (False, 512),
    "bf16": (True, 512),
    "fp32-roi128": (False, 128),
    "bf16-roi128": (True, 128),
}


def run_loop(args: argparse.Namespace, model: str, variant: str) -> tuple[float, float]:
    """Images/s over the timed steps and the last step's total loss."""
    cpu_amp, box_batch = VARIANTS[variant]
    cfg = DistillConfig(
        data=DataConfig(root=args.data, image_size=args.image_size, num_workers=args.workers),
        model=ModelConfig(arch=model, box_batch_size_per_image=box_batch),
        optim=OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_steps=0),
        train=TrainConfig(
            epochs=1000,
            max_steps=args.steps + args.warmup + 1,
            batch_size=args.batch_size,
            device="cpu",
            cpu_amp=cpu_amp,
            eval_every_epochs=0,
            seed=0,
            final_eval=False,
        ),
    )
    clock = _StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        fit(cfg, workdir=tmp, callbacks=[clock])
        last = json.loads((Path(tmp) / "log.jsonl").read_text().splitlines()[-1])
    return images_per_s(clock.times, args.warmup, args.batch_size), float(last["losses"]["loss"])


def variants_for(model: str) -> list[str]:
    """fp32 first (the reference); the RoI-count variants only for Faster R-CNN."""
    if model.startswith("fasterrcnn"):
        return ["fp32", "fp32-roi128", "bf16-roi128"]
    return ["fp32", "bf16"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--models", nargs="+", default=["retinanet_resnet18_fpn"])
    p.add_argument("--image-size", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tag", default="cpu_speed")
    args = p.parse_args()
    rows = []
    for model in args.models:
        names = variants_for(model)
        speed: dict[str, list[float]] = {v: [] for v in names}
        loss: dict[str, float] = {}
        for r in range(args.rounds):
            for v in names:
                ips, loss[v] = run_loop(args, model, v)
                speed[v].append(ips)
            shown = ", ".join(f"{v} {speed[v][-1]:.2f}" for v in names)
            print(f"{model} round {r + 1} (img/s): {shown}", flush=True)
        ref = statistics.median(speed[names[0]])
        for v in names:
            med = statistics.median(speed[v])
            rows.append(
                {
                    "model": model,
                    "variant": v,
                    "images_per_s": speed[v],
                    "median": med,
                    "ratio_to_fp32": med / ref,
                    "last_loss": loss[v],
                }
            )
    _write(args, rows)


def _write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    cpu = platform.processor() or "cpu"
    result = {
        "settings": vars(args),
        "device": f"cpu ({cpu}, {torch.get_num_threads()} threads)",
        "bf16_flags": bf16_flags(),
        "torch": torch.__version__,
        "rows": rows,
    }
    lines = [
        f"CPU {result['device']}, bf16 flags {result['bf16_flags'] or 'none'}, "
        f"{args.image_size} px, batch {args.batch_size}, "
        f"{args.rounds} rounds of {args.steps} steps, torch {torch.__version__}.",
        "",
        "| model | variant | img/s (median) | speed-up over fp32 | loss after the last step |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['variant']} | {row['median']:.2f} | "
            f"**{row['ratio_to_fp32']:.2f}** | {row['last_loss']:.3f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
