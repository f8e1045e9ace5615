"""`bmgkd distill` and `bmgkd preflight` on the tiny set: success paths and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bmgkd_core.cli import main
from bmgkd_core.distill.preflight import run_preflight
from bmgkd_core.models import build_detector
from bmgkd_core.train.checkpoint import save_model

FAST = ["--image-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu"]
NAMES = ("bird", "cat", "dog")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    model = build_detector("retinanet_resnet18_fpn", 4, image_size=64)
    save_model(
        path, model, arch="retinanet_resnet18_fpn", num_classes=4, class_names=NAMES, image_size=64
    )
    return path


def test_cli_distill_two_steps_writes_student_and_teacher_metrics(
    tiny_coco: Path, teacher_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(
        [
            "distill",
            "--data",
            str(tiny_coco),
            "--teacher",
            str(teacher_file),
            "--student",
            "retinanet_mobilenet_v3_large_fpn",
            "--preset",
            "bmgkd",
            "--out",
            str(run),
            "--max-steps",
            "2",
            "--eval-every",
            "0",
            "--quiet",
            *FAST,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "keys matched, 0 missing, 0 unexpected, 0 shape-mismatched" in out
    assert "teacher bbox: AP=" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"AP", "AP50"} <= set(metrics["bbox"])
    assert {"AP", "AP50"} <= set(metrics["teacher"]["bbox"])
    # The teacher's detections, in the same COCO results format as the student's.
    teacher_preds = json.loads((run / "teacher_predictions_val.json").read_text())
    student_preds = json.loads((run / "predictions_val.json").read_text())
    assert isinstance(teacher_preds, list) and isinstance(student_preds, list)
    for pred in teacher_preds[:20]:
        assert set(pred) == {"image_id", "category_id", "bbox", "score"}
        assert pred["category_id"] in {2, 5, 8}  # tiny_coco's (non-contiguous) category ids
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["distill"]["teacher"] == str(teacher_file)
    assert cfg["model"]["arch"] == "retinanet_mobilenet_v3_large_fpn"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "distill_setup"
    steps = [r for r in records if r["type"] == "step"]
    assert len(steps) == 2
    assert {
        "distill.cls",
        "distill.reg",
        "distill.co_cls",
        "distill.co_reg",
        "distill.cka",
        "distill.local",
    } <= set(steps[0]["losses"])
    assert "max_dp_mean" in steps[0]["diag"]


def test_cli_distill_class_mismatch_exits_2_with_message(
    tiny_coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "teacher.pt"
    model = build_detector("retinanet_resnet18_fpn", 3, image_size=64)
    save_model(
        bad,
        model,
        arch="retinanet_resnet18_fpn",
        num_classes=3,
        class_names=("bird", "cat"),
        image_size=64,
    )
    code = main(
        [
            "distill",
            "--data",
            str(tiny_coco),
            "--teacher",
            str(bad),
            "--student",
            "retinanet_resnet18_fpn",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
            *FAST,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "2 classes" in err
    assert "dataset has 3" in err
    assert "Traceback" not in err


def test_cli_distill_missing_teacher_and_family_mismatch_exit_2(
    tiny_coco: Path, teacher_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.pt"
    args = ["distill", "--data", str(tiny_coco), "--out", str(tmp_path / "run"), "--quiet", *FAST]
    assert main([*args, "--teacher", str(missing), "--student", "retinanet_resnet18_fpn"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main([*args, "--teacher", str(teacher_file), "--student", "gfl_resnet18_fpn"]) == 2
    assert "same family" in capsys.readouterr().err
    assert main([*args, "--student", "retinanet_resnet18_fpn"]) == 2
    assert "--teacher is required" in capsys.readouterr().err


def test_cli_preflight_json_reports_every_field(
    tiny_coco: Path, teacher_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "preflight",
            "--data",
            str(tiny_coco),
            "--teacher",
            str(teacher_file),
            "--student",
            "retinanet_resnet18_fpn",
            "--epochs",
            "2",
            "--json",
            *FAST,
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["teacher"]["missing"]["count"] == 0
    assert report["classes"] == {"num_classes": 3, "names": list(NAMES), "match": True}
    assert "AP" in report["teacher_metrics"]["bbox"]
    assert [lv["level"] for lv in report["levels"]] == [0, 1, 2, 3]
    assert report["levels"][0]["student_shape"] == report["levels"][0]["teacher_shape"]
    assert report["adapters"] == []
    assert "distill.cka" in report["first_step_losses"]
    assert report["step_time_s"] > 0
    assert report["memory_kind"] == "cpu_peak_rss_delta"
    assert report["total_steps"] == 6
    assert report["evaluations"] == 2
    assert report["eta_s"] >= report["step_time_s"] * 6


def test_run_preflight_preset_none_still_reports_teacher_and_levels(
    tiny_coco: Path, teacher_file: Path
) -> None:
    from bmgkd_core.config import DataConfig, DistillConfig, KDConfig, ModelConfig, TrainConfig

    cfg = DistillConfig(
        data=DataConfig(root=str(tiny_coco), image_size=64, num_workers=0),
        model=ModelConfig(arch="retinanet_resnet18_fpn"),
        train=TrainConfig(epochs=1, batch_size=2, device="cpu"),
        distill=KDConfig(teacher=str(teacher_file), preset="none"),
    )
    report = run_preflight(cfg, timed_steps=1)
    assert report.terms == []
    assert len(report.levels) == 4
    assert set(report.first_step_losses) == {"task.classification", "task.bbox_regression", "loss"}
    assert "terms: (none: baseline)" in report.format_text()
