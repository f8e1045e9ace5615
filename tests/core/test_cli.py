"""The `bmgkd` command line: success paths, exit codes and messages for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bmgkd_core.cli import main

FAST = [
    "--image-size",
    "96",
    "--batch-size",
    "2",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--eval-every",
    "0",
    "--quiet",
]


def test_cli_train_then_eval_tiny_set_exit_zero(
    tiny_coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(tiny_coco),
            "--model",
            "retinanet_resnet18_fpn",
            "--out",
            str(run),
            "--max-steps",
            "2",
            *FAST,
        ]
    )
    assert code == 0
    assert "bbox: AP=" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 2
    code = main(
        [
            "eval",
            "--data",
            str(tiny_coco),
            "--checkpoint",
            str(run / "model.pt"),
            "--out",
            str(tmp_path / "eval.json"),
            "--workers",
            "0",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    trained = json.loads((run / "metrics.json").read_text())
    assert evaluated["bbox"]["AP"] == pytest.approx(trained["bbox"]["AP"], abs=1e-6)
    assert (tmp_path / "eval_predictions.json").is_file()


def test_cli_eval_cpu_amp_runs_the_model_under_bf16_autocast(
    tiny_coco: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import bmgkd_core.train.evaluate as evaluate_module

    run = tmp_path / "run"
    args = ["--model", "retinanet_resnet18_fpn", "--out", str(run), "--max-steps", "1", *FAST]
    assert main(["train", "--data", str(tiny_coco), *args]) == 0
    seen: list[object] = []
    real = evaluate_module.evaluate_detector  # type: ignore[attr-defined]

    def spy(*a: object, **kw: object) -> object:
        seen.append(kw.get("amp_dtype"))
        return real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluate_module, "evaluate_detector", spy)
    base = ["eval", "--data", str(tiny_coco), "--checkpoint", str(run / "model.pt")]
    base += ["--workers", "0", "--device", "cpu"]
    assert main(base) == 0
    assert main([*base, "--cpu-amp"]) == 0
    assert seen == [None, torch.bfloat16]


def test_cli_train_existing_run_without_resume_exits_2(
    tiny_coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "log.jsonl").write_text("")
    code = main(
        [
            "train",
            "--data",
            str(tiny_coco),
            "--model",
            "retinanet_resnet18_fpn",
            "--out",
            str(tmp_path),
            *FAST,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err
    assert "--resume" in err


def test_cli_train_unknown_model_exits_2_listing_choices(
    tiny_coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--data", str(tiny_coco), "--model", "yolo", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "model.arch" in err
    assert "gfl_resnet18_fpn" in err
    assert "Traceback" not in err


def test_cli_train_missing_data_exits_2_naming_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    code = main(
        [
            "train",
            "--data",
            str(missing),
            "--model",
            "retinanet_resnet18_fpn",
            "--out",
            str(tmp_path / "run"),
            *FAST,
        ]
    )
    assert code == 2
    assert str(missing) in capsys.readouterr().err


def test_cli_train_invalid_dataset_exits_2_with_file_and_record(
    tiny_coco_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann = tiny_coco_copy / "annotations" / "train.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [5, 5, 0, 10]
    ann.write_text(json.dumps(data))
    code = main(
        [
            "train",
            "--data",
            str(tiny_coco_copy),
            "--model",
            "retinanet_resnet18_fpn",
            "--out",
            str(tmp_path / "run"),
            *FAST,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "annotations/train.json" in err
    assert "annotations[0]" in err
    assert not (tmp_path / "run").exists()


def test_cli_validate_reports_and_exit_codes(
    tiny_coco_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "--data", str(tiny_coco_copy)]) == 0
    first = sorted((tiny_coco_copy / "images").iterdir())[0]
    first.unlink()
    assert main(["validate", "--data", str(tiny_coco_copy)]) == 2
    out = capsys.readouterr().out
    assert first.name in out
    assert "ERROR" in out


def test_cli_resume_rejects_changed_option(
    tiny_coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(tiny_coco),
        "--model",
        "retinanet_resnet18_fpn",
        "--out",
        str(run),
        "--max-steps",
        "1",
        *FAST,
    ]
    assert main(args) == 0
    assert main([*args, "--resume", "--lr", "0.5"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # already finished: evaluates and exits cleanly


def test_cli_console_script_bad_config_file_exits_2(tmp_path: Path) -> None:
    exe = shutil.which("bmgkd") or str(Path(sys.executable).parent / "bmgkd")
    bad = tmp_path / "cfg.json"
    bad.write_text(
        '{"data": {"root": "x"}, "model": {"arch": "retinanet_resnet18_fpn"}, '
        '"train": {"epochs": 0}}'
    )
    proc = subprocess.run(
        [
            exe,
            "train",
            "--data",
            str(tmp_path),
            "--config",
            str(bad),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "train.epochs" in proc.stderr
    assert "Traceback" not in proc.stderr


class _FakeEntryPoint:
    """Stands in for an ``importlib.metadata.EntryPoint``: ``load()`` returns or raises."""

    def __init__(self, name: str, target: object) -> None:
        self.name = name
        self.value = f"fake_plugin:{name}"
        self.target = target

    def load(self) -> object:
        if isinstance(self.target, BaseException):
            raise self.target
        return self.target


def test_cli_plugin_commands_added_and_broken_plugin_skipped_with_warning(
    tiny_coco: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import argparse

    import bmgkd_core.cli as cli

    calls: list[str] = []

    def hello(args: argparse.Namespace) -> int:
        calls.append(args.name)
        return 0

    def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser("hello", help="say hello")
        p.add_argument("--name", default="world")
        p.set_defaults(handler=hello)

    plugins = [
        _FakeEntryPoint("hello", register),
        _FakeEntryPoint("broken", ImportError("No module named 'fake_service'")),
    ]
    monkeypatch.setattr(cli, "_command_entry_points", lambda: plugins)

    assert main(["hello"]) == 0
    assert main(["hello", "--name", "bmgkd"]) == 0
    assert calls == ["world", "bmgkd"]
    assert main(["validate", "--data", str(tiny_coco)]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'broken'" in w and "fake_service" in w for w in warnings)


def test_cli_train_cpu_amp_and_box_batch_size_reach_the_config(
    tiny_coco: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_coco), "--model", "fasterrcnn_resnet18_fpn"]
    code = main(
        [*args, "--out", str(run), "--max-steps", "1", "--cpu-amp", "--box-batch-size", "64", *FAST]
    )
    assert code == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["cpu_amp"] is True
    assert cfg["model"]["box_batch_size_per_image"] == 64
    plain = tmp_path / "plain"
    assert main([*args, "--out", str(plain), "--max-steps", "1", *FAST]) == 0
    cfg = json.loads((plain / "config.json").read_text())
    assert cfg["train"]["cpu_amp"] is False
    assert cfg["model"]["box_batch_size_per_image"] == 512
