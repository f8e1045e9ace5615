"""The measured-gain protocol of the BMGKD issue: teacher, then students per preset and seed.

For one dataset and detector family: train a teacher (`--teacher-backbone`, default R50) with
the plain loop, then distil into `--student-backbone` (default R18) with each preset in
`--presets` and each seed in `--seeds`, all with the same schedule. Finished runs are skipped, so
the command can be re-run after an interruption. Prints and writes mean ± std of AP and AP50 per
preset to bench/results/distill_gain_<tag>.{json,md}, with the host that wrote them (CPU results
change with the host and the thread count; with `--report-only` over runs copied from elsewhere
the recorded host is the summarising one). Never tune weights on the split reported.

    python bench/distill_gain.py --data ../shared/datasets/raccoon --family gfl \
        --image-size 320 --teacher-epochs 12 --student-epochs 6 --seeds 0 1 2 --device auto
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from _host import host_info, host_line

from bmgkd_core.config import (
    PRESETS,
    DataConfig,
    DistillConfig,
    KDConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from bmgkd_core.train.loop import fit

RESULTS = Path(__file__).resolve().parent / "results"


def _config(
    args: argparse.Namespace,
    arch: str,
    epochs: int,
    seed: int,
    kd: KDConfig | None,
    lr: float | None = None,
) -> DistillConfig:
    return DistillConfig(
        data=DataConfig(root=args.data, image_size=args.image_size, num_workers=args.workers),
        model=ModelConfig(arch=arch, box_batch_size_per_image=args.box_batch_size),
        optim=OptimConfig(
            optimizer="adamw",
            lr=lr or args.lr,
            weight_decay=0.05,
            warmup_steps=args.warmup_steps,
            scheduler="cosine",
        ),
        train=TrainConfig(
            epochs=epochs,
            batch_size=args.batch_size,
            device=args.device,
            cpu_amp=args.cpu_amp,
            seed=seed,
            eval_every_epochs=0,
        ),
        distill=kd,
    )


def _run(cfg: DistillConfig, workdir: Path, *, report_only: bool) -> dict[str, Any] | None:
    metrics_file = workdir / "metrics.json"
    if metrics_file.is_file():
        print(f"skip (done): {workdir}", flush=True)
        return dict(json.loads(metrics_file.read_text()))
    if report_only:
        return None
    print(f"run: {workdir}", flush=True)
    return fit(cfg, workdir=workdir).metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--family", choices=["retinanet", "gfl", "fasterrcnn"], default="gfl")
    p.add_argument("--teacher-backbone", default="resnet50")
    p.add_argument("--student-backbone", default="resnet18")
    p.add_argument(
        "--presets", nargs="+", choices=PRESETS, default=["none", "logit_kd", "pkd", "bmgkd"]
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--image-size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--student-epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--teacher-lr",
        type=float,
        default=None,
        help="the teacher's learning rate (default: --lr); deep backbones from scratch "
        "may need less",
    )
    p.add_argument(
        "--require-stronger-teacher",
        action="store_true",
        help="stop after the first `none` student if the teacher's AP is not above it",
    )
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--cpu-amp", action="store_true", help="bf16 autocast on the CPU (AMX / AVX512-BF16)"
    )
    p.add_argument(
        "--box-batch-size",
        type=int,
        default=512,
        help="Faster R-CNN: RoIs sampled per training image (512; 128 makes CPU runs cheaper)",
    )
    p.add_argument("--out", default="runs/distill_gain")
    p.add_argument("--tag", default=None)
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing; summarise the runs that have finished",
    )
    args = p.parse_args()
    name = Path(args.data).resolve().name
    tag = args.tag or f"{name}_{args.family}_{args.image_size}"
    root = Path(args.out) / tag
    teacher_arch = f"{args.family}_{args.teacher_backbone}_fpn"
    student_arch = f"{args.family}_{args.student_backbone}_fpn"
    teacher_dir = root / f"teacher_{args.teacher_backbone}"
    teacher_cfg = _config(args, teacher_arch, args.teacher_epochs, 0, None, args.teacher_lr)
    teacher = _run(teacher_cfg, teacher_dir, report_only=args.report_only)
    if teacher is None:
        raise SystemExit(f"no finished teacher in {teacher_dir}")
    results: dict[str, list[dict[str, Any]]] = {}
    for preset in args.presets:
        for seed in args.seeds:
            kd = KDConfig(teacher=str(teacher_dir / "model.pt"), preset=preset)
            cfg = _config(args, student_arch, args.student_epochs, seed, kd)
            metrics = _run(cfg, root / f"{preset}_seed{seed}", report_only=args.report_only)
            if metrics is not None:
                results.setdefault(preset, []).append({"seed": seed, **metrics["bbox"]})
            if preset == "none" and args.require_stronger_teacher and metrics is not None:
                student_ap, teacher_ap = metrics["bbox"]["AP"], teacher["bbox"]["AP"]
                if teacher_ap <= student_ap:
                    _report(args, tag, teacher["bbox"], results)
                    raise SystemExit(
                        f"teacher AP {teacher_ap:.2f} is not above the student without KD "
                        f"(none, seed {seed}: {student_ap:.2f}); stopping"
                    )
    _report(args, tag, teacher["bbox"], results)


def _first_step_scales(workdir: Path) -> dict[str, float]:
    """Each ``distill.*`` term at step 1 divided by the detection loss (spec §6 sanity check)."""
    for line in (workdir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("type") == "step":
            losses = record["losses"]
            det = sum(v for k, v in losses.items() if k.startswith("task."))
            return {k: round(v / det, 3) for k, v in losses.items() if k.startswith("distill.")}
    return {}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _report(
    args: argparse.Namespace,
    tag: str,
    teacher: dict[str, Any],
    results: dict[str, list[dict[str, Any]]],
) -> None:
    rows = []
    host = host_info()
    summary: dict[str, Any] = {
        "settings": vars(args),
        "host": host,
        "teacher": teacher,
        "presets": {},
    }
    for preset, runs in results.items():
        ap, ap50 = _mean_std([r["AP"] for r in runs]), _mean_std([r["AP50"] for r in runs])
        first = Path(args.out) / tag / f"{preset}_seed{runs[0]['seed']}"
        scales = _first_step_scales(first)
        summary["presets"][preset] = {
            "AP": ap,
            "AP50": ap50,
            "runs": runs,
            "first_step_term_over_det": scales,
        }
        print(f"{preset}: step-1 KD term / detection loss: {scales}")
        rows.append(
            f"| {args.family} | {preset} | {len(runs)} | {ap[0]:.2f} ± {ap[1]:.2f} | "
            f"{ap50[0]:.2f} ± {ap50[1]:.2f} |"
        )
    header = [
        f"Teacher {args.family}_{args.teacher_backbone}_fpn: AP {teacher['AP']:.2f}, "
        f"AP50 {teacher['AP50']:.2f}. Student {args.student_backbone}, "
        f"{args.student_epochs} epochs at {args.image_size} px (teacher {args.teacher_epochs}"
        f" epochs, lr {args.teacher_lr or args.lr}; students lr {args.lr}), device {args.device}"
        f"{', bf16 autocast' if args.cpu_amp else ''}"
        f"{f', {args.box_batch_size} RoIs/image' if args.family == 'fasterrcnn' else ''}.",
        host_line(host),
        "",
        "| family | preset | seeds | AP (mean ± std) | AP50 (mean ± std) |",
        "|---|---|---|---|---|",
    ]
    text = "\n".join([*header, *rows]) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"distill_gain_{tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / f"distill_gain_{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
