"""``bmgkd`` command line: ``train``, ``distill``, ``preflight``, ``eval`` and ``validate``.

Thin adapters over the library.

Exit codes: 0 success, 1 training diverged or failed, 2 bad input (the message names the problem;
no traceback), 130 interrupted (a resume checkpoint is written first when training).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from bmgkd_core.config import ARCHITECTURES, PRESETS, DistillConfig
from bmgkd_core.errors import (
    BmgkdError,
    Cancelled,
    CheckpointError,
    ConfigError,
    DataError,
    DivergenceError,
)
from bmgkd_core.train.callbacks import Callback, TrainState

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
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
    "backbone_weights": None,
    "format": "auto",
    "warmup_steps": 500,
    "scheduler": "step",
    "weight_decay": None,
    "multi_scale": None,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bmgkd`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.handler(args)
        return code
    except (ConfigError, DataError, CheckpointError, ValidationError) as exc:
        print(f"bmgkd {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Cancelled as exc:
        print(f"bmgkd {args.command}: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DivergenceError as exc:
        print(f"bmgkd {args.command}: training diverged: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BmgkdError as exc:
        print(f"bmgkd {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bmgkd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

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
    _add_teacher_options(k)
    _add_run_options(k)
    k.set_defaults(handler=_cmd_distill)

    f = sub.add_parser("preflight", help="check a distillation set-up and time one step")
    f.add_argument("--data", required=True, help="dataset root (COCO JSON or Pascal VOC layout)")
    f.add_argument("--student", dest="model", required=True, help="student architecture")
    _add_teacher_options(f)
    f.add_argument("--image-size", type=int, default=512, help="longer image side (512)")
    f.add_argument("--batch-size", type=int, default=4, help="images per step (4)")
    f.add_argument("--epochs", type=int, default=12, help="epochs of the planned run (12)")
    f.add_argument("--max-steps", type=int, help="cap of the planned run")
    f.add_argument("--workers", type=int, default=2, help="data-loader worker processes (2)")
    f.add_argument("--format", default="auto", choices=["auto", "coco", "voc"])
    f.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    f.add_argument("--json", action="store_true", help="print the report as JSON")
    f.set_defaults(handler=_cmd_preflight)

    e = sub.add_parser("eval", help="COCO-evaluate a model.pt on a dataset split")
    e.add_argument("--data", required=True)
    e.add_argument("--checkpoint", required=True, help="a model.pt written by bmgkd train")
    e.add_argument("--split", default="val")
    e.add_argument("--format", default="auto", choices=["auto", "coco", "voc"])
    e.add_argument("--image-size", type=int, help="override the checkpoint's image size")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--out", help="write the metrics JSON here (predictions go beside it)")
    e.set_defaults(handler=_cmd_eval)

    v = sub.add_parser("validate", help="check a dataset; exit 2 when it has errors")
    v.add_argument("--data", required=True)
    v.add_argument("--format", default="auto", choices=["auto", "coco", "voc"])
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(handler=_cmd_validate)
    return parser


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
    t.add_argument("--no-validate", action="store_true", help="skip the dataset validator")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_teacher_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", help="teacher model.pt (bmgkd train) or a plain state dict")
    p.add_argument(
        "--teacher-arch", help="teacher architecture (needed for a plain torchvision state dict)"
    )
    p.add_argument("--preset", choices=PRESETS, help="distillation terms (bmgkd)")


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
    where = {
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
    }
    optimizer = opts.get("optimizer", raw.get("optim", {}).get("optimizer", "sgd"))
    for key, value in opts.items():
        if value is None and key in ("lr", "weight_decay"):
            value = _optimizer_default(key, optimizer)
        if value is None and key not in ("max_steps", "backbone_weights"):
            continue
        if key == "multi_scale" and value is None:
            continue
        section, field = where[key]
        raw.setdefault(section, {})[field] = value


def _optimizer_default(key: str, optimizer: str) -> float:
    if key == "lr":
        return 1e-4 if optimizer == "adamw" else 0.01
    return 0.05 if optimizer == "adamw" else 1e-4


def _cmd_train(args: argparse.Namespace) -> int:
    from bmgkd_core.train.loop import CONFIG_FILE, fit

    out = Path(args.out)
    if args.resume:
        cfg = _resume_config(args, out / CONFIG_FILE)
    else:
        existing = [f for f in _RUN_FILES if (out / f).exists()]
        if existing:
            raise ConfigError(
                f"--out {out} already holds a run ({', '.join(existing)}); "
                "pass --resume to continue it or choose a new folder"
            )
        cfg = _train_config(args)
    if not args.no_validate:
        _validate_or_raise(cfg.data.root, cfg.data.format)
    callback = ConsoleCallback(quiet=args.quiet)
    with callback.catch_interrupt():
        result = fit(cfg, workdir=out, callbacks=[callback], resume=args.resume)
    print(_format_metrics(result.metrics["bbox"]))
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
        existing = [f for f in _RUN_FILES if (out / f).exists()]
        if existing:
            raise ConfigError(
                f"--out {out} already holds a run ({', '.join(existing)}); "
                "pass --resume to continue it or choose a new folder"
            )
        if not (args.model or args.config):
            raise ConfigError("--student is required (or give --config)")
        cfg = _with_distill(args, _train_config(args))
    if not args.no_validate:
        _validate_or_raise(cfg.data.root, cfg.data.format)
    print(check_teacher(cfg).format_text())
    callback = ConsoleCallback(quiet=args.quiet)
    with callback.catch_interrupt():
        result = fit(cfg, workdir=out, callbacks=[callback], resume=args.resume)
    print(_format_metrics(result.metrics["bbox"]))
    teacher = result.metrics.get("teacher")
    if teacher:
        print("teacher " + _format_metrics(teacher["bbox"]))
    print(f"model: {result.model_path}")
    return EXIT_OK


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
        predictions_path=preds,
    )
    print(_format_metrics(metrics["bbox"]))
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


def _format_metrics(bbox: Mapping[str, Any]) -> str:
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    cells = [f"{k}={bbox[k]:.2f}" if bbox.get(k) is not None else f"{k}=n/a" for k in keys]
    return "bbox: " + "  ".join(cells)


def _read_text(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{option}: cannot read {path}: {exc.strerror}") from exc


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
            self._bar.write(f"epoch {state.epoch + 1}: {_format_metrics(metrics['bbox'])}")

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


if __name__ == "__main__":
    sys.exit(main())
