"""fit(): run folder contents, callbacks, divergence, cancel and exact resume (CPU, fixed seed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bmgkd_core.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, TrainConfig
from bmgkd_core.errors import Cancelled, ConfigError, DivergenceError
from bmgkd_core.train.callbacks import Callback, TrainState
from bmgkd_core.train.checkpoint import load_model_file
from bmgkd_core.train.loop import fit


def _cfg(root: Path, arch: str = "retinanet_resnet18_fpn", **train: Any) -> DistillConfig:
    settings: dict[str, Any] = {
        "epochs": 2,
        "batch_size": 2,
        "device": "cpu",
        "seed": 3,
        "eval_every_epochs": 0,
    }
    settings.update(train)
    return DistillConfig(
        data=DataConfig(root=str(root), image_size=96, num_workers=0),
        model=ModelConfig(arch=arch),
        optim=OptimConfig(lr=0.01, warmup_steps=2),
        train=TrainConfig(**settings),
    )


class Recorder(Callback):
    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[str] = []
        self.stop_after = stop_after
        self.last: TrainState | None = None
        self.error: BaseException | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.events.append(f"start@{state.step}")

    def on_step_end(self, state: TrainState) -> None:
        self.events.append(f"step{state.step}")
        self.last = state

    def on_epoch_end(self, state: TrainState, metrics: Any) -> None:
        self.events.append(f"epoch{state.epoch}" + ("+eval" if metrics else ""))

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        self.events.append("end")
        self.error = error

    def should_stop(self) -> bool:
        return (
            self.stop_after is not None
            and self.last is not None
            and (self.last.step >= self.stop_after)
        )


def _step_losses(workdir: Path) -> dict[int, dict[str, float]]:
    lines = [json.loads(ln) for ln in (workdir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["losses"] for r in lines if r["type"] == "step"}


def test_fit_tiny_set_writes_run_folder_and_calls_hooks(tiny_coco: Path, tmp_path: Path) -> None:
    rec = Recorder()
    result = fit(_cfg(tiny_coco, epochs=1), workdir=tmp_path / "run", callbacks=[rec])
    run = tmp_path / "run"
    for name in (
        "config.json",
        "log.jsonl",
        "resume.pt",
        "model.pt",
        "metrics.json",
        "predictions_val.json",
    ):
        assert (run / name).is_file(), name
    assert rec.events[0] == "start@0"
    assert rec.events[-2:] == ["epoch0+eval", "end"]
    assert rec.error is None
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}
    assert result.metrics == metrics
    steps = _step_losses(run)
    assert sorted(steps) == list(range(1, result.steps + 1))
    assert {"task.classification", "task.bbox_regression", "loss"} <= set(steps[1])
    cfg = DistillConfig.model_validate_json((run / "config.json").read_text())
    assert cfg == _cfg(tiny_coco, epochs=1)


def test_fit_resume_after_cancel_matches_uninterrupted_run(tiny_coco: Path, tmp_path: Path) -> None:
    # Faster R-CNN samples proposals with the global RNG: resume must restore it exactly.
    cfg = _cfg(tiny_coco, arch="fasterrcnn_resnet18_fpn", epochs=3)
    full = fit(cfg, workdir=tmp_path / "full")
    stopper = Recorder(stop_after=4)  # mid-epoch: 3 steps per epoch
    with pytest.raises(Cancelled):
        fit(cfg, workdir=tmp_path / "split", callbacks=[stopper])
    assert isinstance(stopper.error, Cancelled)
    assert (tmp_path / "split" / "resume.pt").is_file()
    assert not (tmp_path / "split" / "model.pt").exists()
    resumed = Recorder()
    fit(cfg, workdir=tmp_path / "split", callbacks=[resumed])
    assert resumed.events[0] == "start@4"
    a, b = _step_losses(tmp_path / "full"), _step_losses(tmp_path / "split")
    assert sorted(b) == sorted(a) == list(range(1, full.steps + 1))
    for step in range(5, full.steps + 1):
        for key, value in a[step].items():
            assert b[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)


def test_fit_resume_with_changed_config_raises(tiny_coco: Path, tmp_path: Path) -> None:
    with pytest.raises(Cancelled):
        fit(_cfg(tiny_coco), workdir=tmp_path, callbacks=[Recorder(stop_after=1)])
    changed = _cfg(tiny_coco).model_copy(update={"optim": OptimConfig(lr=0.5, warmup_steps=2)})
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        fit(changed, workdir=tmp_path)


class _NanModel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: Any, targets: Any = None) -> Any:
        out = self.inner(images, targets)
        if self.training:
            out["classification"] = out["classification"] * float("nan")
        return out


def test_fit_non_finite_loss_raises_divergence_with_loss_dict(
    tiny_coco: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bmgkd_core.train.run as run_module

    real = run_module.build_detector
    monkeypatch.setattr(run_module, "build_detector", lambda *a, **k: _NanModel(real(*a, **k)))
    rec = Recorder()
    with pytest.raises(DivergenceError) as info:
        fit(_cfg(tiny_coco), workdir=tmp_path, callbacks=[rec])
    assert info.value.step == 1
    assert set(info.value.losses) == {"task.classification", "task.bbox_regression", "loss"}
    assert isinstance(rec.error, DivergenceError)


def test_fit_max_steps_caps_run_and_is_seeded(tiny_coco: Path, tmp_path: Path) -> None:
    one = fit(_cfg(tiny_coco, max_steps=2), workdir=tmp_path / "a")
    two = fit(_cfg(tiny_coco, max_steps=2), workdir=tmp_path / "b")
    assert one.steps == two.steps == 2
    assert _step_losses(tmp_path / "a") == _step_losses(tmp_path / "b")
    sd_a = load_model_file(tmp_path / "a" / "model.pt").state_dict
    sd_b = load_model_file(tmp_path / "b" / "model.pt").state_dict
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_fit_resume_drops_log_lines_after_checkpoint_and_torn_line(
    tiny_coco: Path, tmp_path: Path
) -> None:
    cfg = _cfg(tiny_coco, max_steps=2)
    with pytest.raises(Cancelled):
        fit(cfg, workdir=tmp_path, callbacks=[Recorder(stop_after=1)])
    log = tmp_path / "log.jsonl"
    with log.open("a") as f:  # what a crash after the checkpoint leaves behind
        f.write(json.dumps({"type": "step", "step": 2, "losses": {}}) + "\n")
        f.write('{"type": "step", "st')
    fit(cfg, workdir=tmp_path)
    steps = [
        json.loads(ln)["step"]
        for ln in log.read_text().splitlines()
        if json.loads(ln)["type"] == "step"
    ]
    assert steps == [1, 2]


def test_amp_dtype_for_cpu_needs_cpu_amp_and_amp() -> None:
    from bmgkd_core.train.run import amp_dtype_for

    cpu = torch.device("cpu")
    assert amp_dtype_for(cpu, True) is None
    assert amp_dtype_for(cpu, True, cpu=True) == torch.bfloat16
    assert amp_dtype_for(cpu, False, cpu=True) is None


def test_fit_cpu_amp_trains_in_bf16_and_saves_fp32_weights(tiny_coco: Path, tmp_path: Path) -> None:
    result = fit(
        _cfg(tiny_coco, epochs=1, cpu_amp=True), workdir=tmp_path / "run", callbacks=[Recorder()]
    )
    steps = _step_losses(tmp_path / "run")
    assert len(steps) == result.steps
    assert all(torch.isfinite(torch.tensor(list(v.values()))).all() for v in steps.values())
    sd = load_model_file(tmp_path / "run" / "model.pt").state_dict
    seen = sorted({v.dtype for v in sd.values() if v.is_floating_point()}, key=str)
    assert seen == [torch.float32]
    # the same seed without cpu_amp gives other losses: autocast was really on
    plain = fit(_cfg(tiny_coco, epochs=1, max_steps=1), workdir=tmp_path / "plain")
    assert plain.steps == 1
    assert _step_losses(tmp_path / "plain")[1] != steps[1]
