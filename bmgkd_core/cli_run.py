"""``bmgkd train`` and ``bmgkd distill``: options, run-config building, resume checks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bmgkd_core.cli_console import EXIT_OK, ConsoleCallback, format_metrics
from bmgkd_core.config import ARCHITECTURES, PRESETS, DistillConfig
from bmgkd_core.errors import ConfigError, DataError

_RUN_FILES = ("model.pt", "resume.pt", "log.jsonl", "metrics.json")

# Defaults of `bmgkd train`, applied after parsing so `--resume` can tell what the user set.
_TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 12,
    "image_size": 512,
    "batch_size": 4,
    "lr": None,
    "device": "auto",
    "seed": 0,
    "max_steps": None,
    "optimizer": "sgd",
    "workers": 2,
    "eval_every": 1,
    "amp": True,
    "cpu_amp": False,
    "box_batch_size": 512,
    "backbone_weights": None,
    "format": "auto",
    "warmup_steps": 500,
    "scheduler": "step",
    "weight_decay": None,
    "multi_scale": None,
}

# Option name -> (config section, field), for the options shared by train and distill.
_OPTION_FIELDS: dict[str, tuple[str, str]] = {
    "image_size": ("data", "image_size"),
    "workers": ("data", "num_workers"),
    "format": ("data", "format"),
    "multi_scale": ("data", "multi_scale"),
    "backbone_weights": ("model", "backbone_weights"),
    "optimizer": ("optim", "optimizer"),
    "lr": ("optim", "lr"),
    "warmup_steps": ("optim", "warmup_steps"),
    "scheduler": ("optim", "scheduler"),
    "weight_decay": ("optim", "weight_decay"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "device": ("train", "device"),
    "seed": ("train", "seed"),
    "max_steps": ("train", "max_steps"),
    "eval_every": ("train", "eval_every_epochs"),
    "amp": ("train", "amp"),
    "cpu_amp": ("train", "cpu_amp"),
    "box_batch_size": ("model", "box_batch_size_per_image"),
}


def add_run_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train`` and ``distill`` sub-commands to ``sub``."""
    t = sub.add_parser("train", help="train a detector and evaluate it on the val split")
    t.add_argument("--data", required=True, help="dataset root (COCO JSON or Pascal VOC layout)")
    t.add_argument("--model", help=f"architecture: {', '.join(ARCHITECTURES)}")
    _add_run_options(t)
    t.set_defaults(handler=_cmd_train)

    k = sub.add_parser("distill", help="distill a teacher into a student (BMGKD) and evaluate")
    k.add_argument("--data", required=True, help="dataset root (COCO JSON or Pascal VOC layout)")
    k.add_argument(
        "--student", dest="model", help=f"student architecture: {', '.join(ARCHITECTURES)}"
    )
    add_teacher_options(k)
    _add_run_options(k)
    k.set_defaults(handler=_cmd_distill)


def add_teacher_options(p: argparse.ArgumentParser) -> None:
    """Add ``--teacher``, ``--teacher-arch`` and ``--preset`` (distill and preflight)."""
    p.add_argument("--teacher", help="teacher model.pt (bmgkd train) or a plain state dict")
    p.add_argument(
        "--teacher-arch", help="teacher architecture (needed for a plain torchvision state dict)"
    )
    p.add_argument("--preset", choices=PRESETS, help="distillation terms (bmgkd)")


def _add_run_options(t: argparse.ArgumentParser) -> None:
    """The options shared by ``train`` and ``distill``."""
    t.add_argument("--out", required=True, help="run folder (model.pt, log.jsonl, metrics.json)")
    t.add_argument("--config", help="a JSON run config (as written to RUN_DIR/config.json)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    for name, kind, help_ in (
        ("epochs", int, "number of epochs (12)"),
        ("image-size", int, "longer image side in pixels (512)"),
        ("batch-size", int, "images per step (4)"),
        ("lr", float, "base learning rate (0.01 SGD, 1e-4 AdamW)"),
        ("seed", int, "random seed (0)"),
        ("max-steps", int, "stop after this many steps"),
        ("workers", int, "data-loader worker processes (2)"),
        ("eval-every", int, "evaluate every N epochs; 0 = only at the end (1)"),
        ("warmup-steps", int, "linear warm-up steps (500, capped at a third of the run)"),
        ("weight-decay", float, "weight decay (1e-4 SGD, 0.05 AdamW)"),
        ("backbone-weights", str, "local ImageNet state dict for the backbone"),
        ("box-batch-size", int, "Faster R-CNN: RoIs sampled per training image (512)"),
    ):
        t.add_argument(f"--{name}", type=kind, help=help_)
    t.add_argument("--multi-scale", type=int, nargs="+", help="extra training sizes")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--optimizer", choices=["sgd", "adamw"])
    t.add_argument("--scheduler", choices=["step", "cosine", "constant"])
    t.add_argument("--format", choices=["auto", "coco", "voc"])
    t.add_argument(
        "--no-amp",
        dest="amp",
        action="store_const",
        const=False,
        help="disable mixed precision on CUDA",
    )
    t.add_argument(
        "--cpu-amp",
        action="store_const",
        const=True,
        help="bf16 autocast on the CPU too (faster on CPUs with AMX / AVX512-BF16)",
    )
    t.add_argument("--no-validate", action="store_true", help="skip the dataset validator")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_train(args: argparse.Namespace) -> int:
    from bmgkd_core.train.loop import CONFIG_FILE, fit

    out = Path(args.out)
    if args.resume:
        cfg = _resume_config(args, out / CONFIG_FILE)
    else:
        _require_fresh_run_dir(out)
        cfg = _train_config(args)
    if not args.no_validate:
        _validate_or_raise(cfg.data.root, cfg.data.format)
    callback = ConsoleCallback(quiet=args.quiet)
    with callback.catch_interrupt():
        result = fit(cfg, workdir=out, callbacks=[callback], resume=args.resume)
    print(format_metrics(result.metrics["bbox"]))
    print(f"model: {result.model_path}")
    return EXIT_OK


def _cmd_distill(args: argparse.Namespace) -> int:
    from bmgkd_core.distill.teacher import check_teacher
    from bmgkd_core.train.loop import CONFIG_FILE, fit

    out = Path(args.out)
    if args.resume:
        cfg = _resume_config(args, out / CONFIG_FILE)
        _check_resumed_teacher(args, cfg)
    else:
        _require_fresh_run_dir(out)
        if not (args.model or args.config):
            raise ConfigError("--student is required (or give --config)")
        cfg = _with_distill(args, _train_config(args))
    if not args.no_validate:
        _validate_or_raise(cfg.data.root, cfg.data.format)
    print(check_teacher(cfg).format_text())
    callback = ConsoleCallback(quiet=args.quiet)
    with callback.catch_interrupt():
        result = fit(cfg, workdir=out, callbacks=[callback], resume=args.resume)
    print(format_metrics(result.metrics["bbox"]))
    teacher = result.metrics.get("teacher")
    if teacher:
        print("teacher " + format_metrics(teacher["bbox"]))
    print(f"model: {result.model_path}")
    return EXIT_OK


def _train_config(args: argparse.Namespace) -> DistillConfig:
    """Build the run config from --config and the options, explicit options winning."""
    given = {k: getattr(args, k) for k in _TRAIN_DEFAULTS if getattr(args, k) is not None}
    if args.config:
        base = DistillConfig.model_validate_json(_read_text(Path(args.config), "--config"))
        raw = base.model_dump()
        raw["data"]["root"] = args.data
        if args.model:
            raw["model"]["arch"] = args.model
        _apply_options(raw, given)
        return DistillConfig.model_validate(raw)
    if not args.model:
        raise ConfigError("--model is required (or give --config)")
    opts = {**_TRAIN_DEFAULTS, **given}
    raw = {"data": {"root": args.data}, "model": {"arch": args.model}, "optim": {}, "train": {}}
    _apply_options(raw, opts)
    return DistillConfig.model_validate(raw)


def _apply_options(raw: dict[str, Any], opts: Mapping[str, Any]) -> None:
    optimizer = opts.get("optimizer", raw.get("optim", {}).get("optimizer", "sgd"))
    for key, value in opts.items():
        if value is None and key in ("lr", "weight_decay"):
            value = _optimizer_default(key, optimizer)
        if value is None and key not in ("max_steps", "backbone_weights"):
            continue
        if key == "multi_scale" and value is None:
            continue
        section, field = _OPTION_FIELDS[key]
        raw.setdefault(section, {})[field] = value


def _optimizer_default(key: str, optimizer: str) -> float:
    if key == "lr":
        return 1e-4 if optimizer == "adamw" else 0.01
    return 0.05 if optimizer == "adamw" else 1e-4


def _require_fresh_run_dir(out: Path) -> None:
    existing = [f for f in _RUN_FILES if (out / f).exists()]
    if existing:
        raise ConfigError(
            f"--out {out} already holds a run ({', '.join(existing)}); "
            "pass --resume to continue it or choose a new folder"
        )


def _with_distill(args: argparse.Namespace, cfg: DistillConfig) -> DistillConfig:
    """``cfg`` with its distill section from --teacher/--teacher-arch/--preset (options win)."""
    raw = cfg.model_dump()
    kd = dict(raw.get("distill") or {})
    for option, key in (
        ("teacher", "teacher"),
        ("teacher_arch", "teacher_arch"),
        ("preset", "preset"),
    ):
        if getattr(args, option) is not None:
            kd[key] = getattr(args, option)
    if "teacher" not in kd:
        raise ConfigError("--teacher is required (or a --config with distill.teacher)")
    raw["distill"] = kd
    return DistillConfig.model_validate(raw)


def _check_resumed_teacher(args: argparse.Namespace, cfg: DistillConfig) -> None:
    if cfg.distill is None:
        raise ConfigError(f"--resume: {args.out} is not a distillation run (no distill section)")
    saved = cfg.distill.model_dump()
    diffs = [
        f"distill.{key}"
        for key in ("teacher", "teacher_arch", "preset")
        if getattr(args, key) is not None and getattr(args, key) != saved[key]
    ]
    if diffs:
        raise ConfigError(
            f"--resume keeps the run's config; these options differ from it: {', '.join(diffs)}"
        )


def _resume_config(args: argparse.Namespace, path: Path) -> DistillConfig:
    if not path.is_file():
        raise ConfigError(f"--resume: {path} not found; nothing to resume in {path.parent}")
    saved = DistillConfig.model_validate_json(_read_text(path, "--resume"))
    asked = _train_config(args) if (args.model or args.config) else None
    if asked is not None:
        raw_saved, raw_asked = saved.model_dump(), asked.model_dump()
        given = {k for k in _TRAIN_DEFAULTS if getattr(args, k) is not None}
        diffs = [
            f"{s}.{f}"
            for s, sec in raw_asked.items()
            if isinstance(sec, dict)
            for f, v in sec.items()
            if v != raw_saved[s][f] and _option_of(s, f) in given
        ]
        if diffs:
            raise ConfigError(
                f"--resume keeps the run's config; these options differ from {path}: "
                + ", ".join(diffs)
            )
    raw = saved.model_dump()
    raw["data"]["root"] = args.data
    return DistillConfig.model_validate(raw)


def _option_of(section: str, field: str) -> str:
    names = {("data", "num_workers"): "workers", ("train", "eval_every_epochs"): "eval_every"}
    return names.get((section, field), field)


def _validate_or_raise(root: str, data_format: str) -> None:
    from bmgkd_core.data import validate_dataset

    report = validate_dataset(root, format=data_format)  # type: ignore[arg-type]
    if report.errors:
        raise DataError(f"{root}: the dataset has errors:\n{report.format_text()}")
    if report.warnings:
        print(
            f"bmgkd: {len(report.warnings)} dataset warning(s) (bmgkd validate --data "
            f"{root} lists them)",
            file=sys.stderr,
        )


def _read_text(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{option}: cannot read {path}: {exc.strerror}") from exc
