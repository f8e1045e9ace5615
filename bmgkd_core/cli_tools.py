"""``bmgkd preflight``, ``bmgkd eval`` and ``bmgkd validate``: checks and evaluation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bmgkd_core.cli_console import EXIT_OK, EXIT_USAGE, format_metrics
from bmgkd_core.cli_run import add_teacher_options
from bmgkd_core.config import DistillConfig
from bmgkd_core.errors import ConfigError

_FORMATS = ["auto", "coco", "voc"]
_DEVICES = ["auto", "cpu", "cuda"]


def add_tool_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``preflight``, ``eval`` and ``validate`` sub-commands to ``sub``."""
    _add_preflight(sub)
    _add_eval(sub)
    v = sub.add_parser("validate", help="check a dataset; exit 2 when it has errors")
    v.add_argument("--data", required=True)
    v.add_argument("--format", default="auto", choices=_FORMATS)
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(handler=_cmd_validate)
    t = sub.add_parser(
        "inspect-teacher", help="check a teacher checkpoint's keys strictly; exit 2 on mismatch"
    )
    t.add_argument("--checkpoint", required=True, help="model.pt or a torchvision state dict")
    t.add_argument("--arch", help="architecture (required for a plain state dict)")
    t.add_argument(
        "--classes", help="class names, comma-separated or a JSON list (required for a state dict)"
    )
    t.add_argument("--json", action="store_true", help="print the report as JSON")
    t.set_defaults(handler=_cmd_inspect_teacher)


def _add_preflight(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    f = sub.add_parser("preflight", help="check a distillation set-up and time one step")
    f.add_argument("--data", required=True, help="dataset root (COCO JSON or Pascal VOC layout)")
    f.add_argument("--student", dest="model", required=True, help="student architecture")
    add_teacher_options(f)
    f.add_argument("--image-size", type=int, default=512, help="longer image side (512)")
    f.add_argument("--batch-size", type=int, default=4, help="images per step (4)")
    f.add_argument("--epochs", type=int, default=12, help="epochs of the planned run (12)")
    f.add_argument("--max-steps", type=int, help="cap of the planned run")
    f.add_argument("--workers", type=int, default=2, help="data-loader worker processes (2)")
    f.add_argument("--format", default="auto", choices=_FORMATS)
    f.add_argument("--device", default="auto", choices=_DEVICES)
    f.add_argument("--json", action="store_true", help="print the report as JSON")
    f.set_defaults(handler=_cmd_preflight)


def _add_eval(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser("eval", help="COCO-evaluate a model.pt on a dataset split")
    e.add_argument("--data", required=True)
    e.add_argument("--checkpoint", required=True, help="a model.pt written by bmgkd train")
    e.add_argument("--split", default="val")
    e.add_argument("--format", default="auto", choices=_FORMATS)
    e.add_argument("--image-size", type=int, help="override the checkpoint's image size")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--device", default="auto", choices=_DEVICES)
    e.add_argument(
        "--cpu-amp", action="store_true", help="bf16 autocast on the CPU (AMX / AVX512-BF16)"
    )
    e.add_argument("--out", help="write the metrics JSON here (predictions go beside it)")
    e.set_defaults(handler=_cmd_eval)


def _cmd_preflight(args: argparse.Namespace) -> int:
    from bmgkd_core.distill.preflight import run_preflight

    if args.teacher is None:
        raise ConfigError("--teacher is required")
    kd: dict[str, Any] = {"teacher": args.teacher, "teacher_arch": args.teacher_arch}
    if args.preset is not None:
        kd["preset"] = args.preset
    cfg = DistillConfig.model_validate(
        {
            "data": {
                "root": args.data,
                "format": args.format,
                "image_size": args.image_size,
                "num_workers": args.workers,
            },
            "model": {"arch": args.model},
            "train": {
                "epochs": args.epochs,
                "max_steps": args.max_steps,
                "batch_size": args.batch_size,
                "device": args.device,
            },
            "distill": kd,
        }
    )
    report = run_preflight(cfg)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_text())
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    from bmgkd_core.train.evaluate import evaluate

    out = Path(args.out) if args.out else None
    preds = out.with_name(out.stem + "_predictions.json") if out else None
    metrics = evaluate(
        args.checkpoint,
        data=args.data,
        split=args.split,
        data_format=args.format,
        image_size=args.image_size,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.workers,
        cpu_amp=args.cpu_amp,
        predictions_path=preds,
    )
    print(format_metrics(metrics["bbox"]))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        print(f"metrics: {out}\npredictions: {preds}")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from bmgkd_core.data import validate_dataset

    report = validate_dataset(args.data, format=args.format)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        text = report.format_text()
        if text:
            print(text)
        print(f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return EXIT_USAGE if report.errors else EXIT_OK


def _cmd_inspect_teacher(args: argparse.Namespace) -> int:
    from bmgkd_core.distill.teacher import inspect_teacher

    names: list[str] | None = None
    if args.classes and args.classes.lstrip().startswith("["):
        names = [str(n) for n in json.loads(args.classes)]
    elif args.classes:
        names = [n.strip() for n in args.classes.split(",")]
    report = inspect_teacher(args.checkpoint, arch=args.arch, class_names=names)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_text())
    return EXIT_OK
