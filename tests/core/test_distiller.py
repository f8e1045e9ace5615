"""The BMGKD Distiller: one CPU step per family and pair, freezing, presets, adapters, teacher load.

Models are built with random weights at 96 px (``num_classes=4``: 3 tiny-set classes + background).
Every batch holds one image with boxes and one without, so every test also covers empty GT.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import bmgkd_core.models.backbones as backbones_module
from bmgkd_core.config import (
    PRESET_TERMS,
    DataConfig,
    DistillConfig,
    KDConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from bmgkd_core.data import build_transforms, load_dataset
from bmgkd_core.distill import Distiller, LevelPair, build_adapters, load_teacher
from bmgkd_core.errors import Cancelled, CheckpointError, ConfigError, DataError
from bmgkd_core.models import build_detector
from bmgkd_core.train.callbacks import Callback, TrainState
from bmgkd_core.train.checkpoint import load_model_file, load_resume, save_model
from bmgkd_core.train.loop import fit

SIZE = 96
NUM_CLASSES = 4
NAMES = ("bird", "cat", "dog")
TASK_KEYS = {
    "retinanet": {"task.classification", "task.bbox_regression"},
    "gfl": {"task.classification", "task.bbox_regression", "task.bbox_distribution"},
    "fasterrcnn": {
        "task.loss_classifier",
        "task.loss_box_reg",
        "task.loss_objectness",
        "task.loss_rpn_box_reg",
    },
}
PAIRS = {"same_width": ("resnet34", "resnet18"), "cross_arch": ("resnet18", "mobilenet_v3_large")}


def distill_keys(terms: tuple[str, ...], family: str) -> set[str]:
    keys: set[str] = set()
    for term in terms:
        if term == "co":
            keys |= {"distill.co_cls", "distill.co_reg"}
        elif term != "ld" or family == "gfl":
            keys.add(f"distill.{term}")
    return keys


def build(family: str, backbone: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_detector(f"{family}_{backbone}_fpn", NUM_CLASSES, image_size=SIZE)
    if family == "fasterrcnn":  # fewer RoIs/proposals: same code paths, a CPU-friendly step
        model.roi_heads.fg_bg_sampler.batch_size_per_image = 128
        model.rpn._post_nms_top_n = {"training": 300, "testing": 300}
    return model


def make_distiller(
    family: str, teacher_bb: str, student_bb: str, preset: str = "bmgkd", **kd: Any
) -> Distiller:
    teacher = build(family, teacher_bb, seed=1)
    student = build(family, student_bb, seed=2)
    cfg = KDConfig(teacher="unused.pt", preset=preset, **kd)  # type: ignore[arg-type]
    return Distiller(student, teacher, family=family, kd=cfg)


@pytest.fixture(scope="module")
def batch(tiny_coco: Path) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    ds = load_dataset(tiny_coco, "train", transforms=build_transforms(train=False, image_size=SIZE))
    samples = [ds[0], ds[len(ds) - 1]]  # the last train image has no boxes
    assert samples[1][1]["boxes"].shape == (0, 4)
    return [s[0] for s in samples], [s[1] for s in samples]


@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("family", ["retinanet", "gfl", "fasterrcnn"])
def test_distiller_step_trains_student_only_with_finite_losses(
    family: str, pair: str, batch: Any
) -> None:
    distiller = make_distiller(family, *PAIRS[pair])
    distiller.train()
    assert not distiller.teacher.training
    assert not any(m.training for m in distiller.teacher.modules())
    assert distiller.student.training
    teacher_before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.01)

    losses = distiller(*batch)

    assert set(losses) == TASK_KEYS[family] | distill_keys(PRESET_TERMS["bmgkd"], family)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    optimizer.step()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in distiller.teacher.state_dict().items())
    assert any(p.grad is not None for p in distiller.student.parameters())
    grads = {id(p) for p in distiller.parameters() if p.grad is not None}
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert grads <= trainable
    assert not any(id(p) in trainable for p in distiller.teacher.parameters())
    assert set(distiller.student_state_dict()) == set(distiller.student.state_dict())
    assert not any(k.startswith("teacher") for k in distiller.student_state_dict())
    diag = distiller.last_diagnostics()
    assert {"cka_inter.0", "mask_entropy_sp.0", "mask_entropy_ch.0", "max_dp_mean"} <= set(diag)
    assert "hq_per_image" in diag
    assert all(isinstance(v, float) for v in diag.values())
    assert distiller.describe()["adapters"] == []  # 256-wide FPNs, same strides


@pytest.mark.parametrize("family", ["retinanet", "gfl", "fasterrcnn"])
def test_distiller_preset_none_equals_plain_detector_without_teacher_pass(
    family: str, batch: Any
) -> None:
    distiller = make_distiller(family, "resnet18", "resnet18", preset="none")
    plain = copy.deepcopy(distiller.student).train()

    def fail(*args: Any) -> None:
        raise AssertionError("the teacher must not run with preset none")

    distiller.teacher.forward = fail  # type: ignore[method-assign]
    distiller.teacher.backbone.forward = fail  # type: ignore[method-assign]
    distiller.train()
    torch.manual_seed(7)
    losses = distiller(*batch)
    torch.manual_seed(7)
    expected = plain(*batch)

    assert set(losses) == {f"task.{k}" for k in expected}
    for key, value in expected.items():
        assert torch.equal(losses[f"task.{key}"], value), key


@pytest.mark.parametrize(
    ("family", "preset"),
    [("retinanet", p) for p in ("fdd", "rdd", "logit_kd", "pkd")]
    + [("gfl", "rdd"), ("fasterrcnn", "logit_kd")],
)
def test_distiller_preset_runs_exactly_its_terms(family: str, preset: str, batch: Any) -> None:
    distiller = make_distiller(family, "resnet18", "resnet18", preset=preset).train()
    losses = distiller(*batch)
    assert set(losses) == TASK_KEYS[family] | distill_keys(PRESET_TERMS[preset], family)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()


@pytest.mark.parametrize("rpn_weight", [0.0, 0.5])
def test_fasterrcnn_cls_term_weighs_rpn_and_roi_parts_apart(rpn_weight: float, batch: Any) -> None:
    distiller = make_distiller(
        "fasterrcnn",
        "resnet18",
        "resnet18",
        preset="rdd",
        cls_weight=2.0,
        cls_rpn_weight=rpn_weight,
    ).train()
    losses = distiller(*batch)
    diag = distiller.last_diagnostics()
    assert diag["cls_rpn"] > 0 and diag["cls_roi"] > 0
    expected = rpn_weight * diag["cls_rpn"] + 2.0 * diag["cls_roi"]
    assert losses["distill.cls"].item() == pytest.approx(expected, rel=1e-5)


TEACHER_HEADS = {
    "retinanet": ("head",),
    "gfl": ("head",),
    "fasterrcnn": ("rpn.head", "roi_heads.box_head", "roi_heads.box_predictor"),
}
SHARED_RANGES = {"teacher", "adapters", "diag", "select"}
TERM_RANGES = {"retinanet": {"prep"}, "gfl": {"prep", "ld"}, "fasterrcnn": set()}


def profiled_ranges(distiller: Distiller, batch: Any) -> tuple[dict[str, torch.Tensor], set[str]]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        losses = distiller(*batch)
    names = {e.name.removeprefix("bmgkd.") for e in prof.events() if e.name.startswith("bmgkd.")}
    return losses, names


@pytest.mark.parametrize("family", ["retinanet", "gfl", "fasterrcnn"])
def test_distiller_compute_terms_off_runs_the_teacher_but_no_term(family: str, batch: Any) -> None:
    """The timing switch of bench/distill_overhead.py; every term's forward is a profiler range."""
    distiller = make_distiller(family, "resnet18", "resnet18").train()
    torch.manual_seed(7)
    full, ranges = profiled_ranges(distiller, batch)
    assert distiller.compute_terms
    keys = [k.removeprefix("distill.") for k in full if k.startswith("distill.")]
    terms = {k.removesuffix("_cls").removesuffix("_reg") for k in keys}  # co_cls, co_reg -> co
    assert terms >= {"cka", "local", "cls", "reg", "co"}
    assert ranges == SHARED_RANGES | TERM_RANGES[family] | terms

    distiller.compute_terms = False
    ran: list[str] = []
    for name in (*TEACHER_HEADS[family], "backbone"):
        module = distiller.teacher.get_submodule(name)
        module.register_forward_hook(lambda *_, name=name: ran.append(name))
    torch.manual_seed(7)
    task_only, ranges = profiled_ranges(distiller, batch)

    assert sorted(ran) == sorted((*TEACHER_HEADS[family], "backbone"))  # the whole teacher ran
    assert ranges == {"teacher"}
    assert set(task_only) == TASK_KEYS[family]
    for key in TASK_KEYS[family]:
        assert torch.equal(task_only[key], full[key]), key
    assert distiller.last_diagnostics() == {}
    sum(task_only.values()).backward()


def test_distiller_eval_mode_returns_student_detections(batch: Any) -> None:
    distiller = make_distiller("retinanet", "resnet18", "resnet18").eval()
    with torch.no_grad():
        detections = distiller(batch[0])
    assert len(detections) == 2
    assert {"boxes", "labels", "scores"} <= set(detections[0])


def test_distiller_channel_mismatch_inserts_trained_1x1_adapters(
    batch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = build("retinanet", "resnet18", seed=1)
    with monkeypatch.context() as m:
        m.setattr(backbones_module, "FPN_CHANNELS", 128)
        student = build("retinanet", "resnet18", seed=2)
    distiller = Distiller(student, teacher, family="retinanet", kd=KDConfig(teacher="t.pt"))
    report = distiller.describe()
    assert [a["adapter"] for a in report["adapters"]] == ["conv1x1 128->256"] * 4
    assert report["levels"][0]["student_shape"][1] == 128
    convs = [m for m in distiller.adapters.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4
    assert all(any(p is q for q in distiller.trainable_parameters()) for p in convs[0].parameters())
    before = convs[0].weight.detach().clone()
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    losses = distiller.train()(*batch)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert convs[0].weight.grad is not None
    optimizer.step()
    assert not torch.equal(convs[0].weight, before)
    assert not any("adapters" in k for k in distiller.student_state_dict())


def test_feature_adapter_resizes_to_teacher_size_and_describes_itself() -> None:
    pair = LevelPair(0, "0", (2, 128, 6, 6), (2, 256, 12, 12))
    adapter = build_adapters([pair])[0]
    out = adapter(torch.randn(2, 128, 6, 6, requires_grad=True), (12, 12))
    assert out.shape == (2, 256, 12, 12)
    assert pair.to_dict()["adapter"] == "conv1x1 128->256 + resize 6x6->12x12"
    same = build_adapters([LevelPair(0, "0", (2, 256, 6, 6), (2, 256, 6, 6))])[0]
    x = torch.randn(2, 256, 6, 6)
    assert same(x, (6, 6)) is x
    assert not list(same.parameters())


def test_distiller_rejects_teacher_of_another_family() -> None:
    with pytest.raises(ConfigError, match="same detector family"):
        Distiller(
            build("retinanet", "resnet18"),
            build("gfl", "resnet18"),
            family="retinanet",
            kd=KDConfig(teacher="t.pt"),
        )


# --- teacher loading -------------------------------------------------------------------------


def save_teacher(path: Path, arch: str, names: tuple[str, ...] = NAMES) -> Path:
    model = build_detector(arch, len(names) + 1, image_size=SIZE)
    save_model(
        path, model, arch=arch, num_classes=len(names) + 1, class_names=names, image_size=SIZE
    )
    return path


def test_load_teacher_model_file_is_strict_frozen_and_reports_keys(tmp_path: Path) -> None:
    path = save_teacher(tmp_path / "model.pt", "retinanet_resnet18_fpn")
    teacher, report = load_teacher(
        KDConfig(teacher=str(path)),
        student_arch="retinanet_mobilenet_v3_large_fpn",
        class_names=NAMES,
        image_size=SIZE,
    )
    assert report.ok
    assert report.matched == len(teacher.state_dict())
    assert report.kind == "model_file"
    assert "0 missing" in report.format_text()
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_load_teacher_class_count_mismatch_raises(tmp_path: Path) -> None:
    path = save_teacher(tmp_path / "model.pt", "retinanet_resnet18_fpn", names=("bird", "cat"))
    with pytest.raises(ConfigError, match=r"2 classes .* dataset has 3"):
        load_teacher(
            KDConfig(teacher=str(path)),
            student_arch="retinanet_resnet18_fpn",
            class_names=NAMES,
            image_size=SIZE,
        )


def test_load_teacher_class_name_mismatch_raises(tmp_path: Path) -> None:
    path = save_teacher(tmp_path / "model.pt", "gfl_resnet18_fpn", names=("bird", "cow", "dog"))
    with pytest.raises(DataError, match="label 2: teacher 'cow' vs data 'cat'"):
        load_teacher(
            KDConfig(teacher=str(path)),
            student_arch="gfl_resnet18_fpn",
            class_names=NAMES,
            image_size=SIZE,
        )


def test_load_teacher_plain_state_dict_class_count_from_head(tmp_path: Path) -> None:
    path = tmp_path / "tv.pt"
    torch.save(build_detector("fasterrcnn_resnet18_fpn", 6, image_size=SIZE).state_dict(), path)
    kd = KDConfig(teacher=str(path), teacher_arch="fasterrcnn_resnet18_fpn")
    with pytest.raises(ConfigError, match=r"predicts 6 classes .*cls_score\.bias"):
        load_teacher(kd, student_arch="fasterrcnn_resnet18_fpn", class_names=NAMES, image_size=SIZE)
    with pytest.raises(ConfigError, match="teacher_arch"):
        load_teacher(
            KDConfig(teacher=str(path)),
            student_arch="fasterrcnn_resnet18_fpn",
            class_names=NAMES,
            image_size=SIZE,
        )


def test_load_teacher_wrong_arch_state_dict_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "tv.pt"
    torch.save(build_detector("retinanet_resnet18_fpn", 4, image_size=SIZE).state_dict(), path)
    kd = KDConfig(teacher=str(path), teacher_arch="retinanet_resnet34_fpn")
    with pytest.raises(CheckpointError) as info:
        load_teacher(kd, student_arch="retinanet_resnet18_fpn", class_names=NAMES, image_size=SIZE)
    message = str(info.value)
    assert "missing" in message
    assert "backbone.body.layer1.2.bn1.bias" in message


def test_load_teacher_family_mismatch_raises(tmp_path: Path) -> None:
    path = save_teacher(tmp_path / "model.pt", "gfl_resnet18_fpn")
    with pytest.raises(ConfigError, match="same family"):
        load_teacher(
            KDConfig(teacher=str(path)),
            student_arch="retinanet_resnet18_fpn",
            class_names=NAMES,
            image_size=SIZE,
        )


# --- the loop ------------------------------------------------------------------------------


class StopAfter(Callback):
    def __init__(self, step: int) -> None:
        self.step = step
        self.last = 0

    def on_step_end(self, state: TrainState) -> None:
        self.last = state.step

    def should_stop(self) -> bool:
        return self.last >= self.step


def test_fit_distill_logs_setup_saves_adapters_and_resumes(
    tiny_coco: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bmgkd_core.train.run as run_module

    real = run_module.build_detector

    def narrow_student(*args: Any, **kwargs: Any) -> nn.Module:
        with monkeypatch.context() as m:
            m.setattr(backbones_module, "FPN_CHANNELS", 128)
            return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "build_detector", narrow_student)
    teacher = save_teacher(tmp_path / "teacher.pt", "retinanet_resnet18_fpn")
    cfg = DistillConfig(
        data=DataConfig(root=str(tiny_coco), image_size=64, num_workers=0),
        model=ModelConfig(arch="retinanet_resnet18_fpn"),
        optim=OptimConfig(lr=0.01, warmup_steps=1),
        train=TrainConfig(epochs=1, max_steps=2, batch_size=2, device="cpu", eval_every_epochs=0),
        distill=KDConfig(teacher=str(teacher), preset="fdd"),
    )
    run = tmp_path / "run"
    with pytest.raises(Cancelled):
        fit(cfg, workdir=run, callbacks=[StopAfter(1)])
    resume = load_resume(run / "resume.pt")
    assert set(resume["adapters"]) == {
        f"{i}.proj.{p}" for i in range(4) for p in ("weight", "bias")
    }
    assert not any(k.startswith("teacher") for k in resume["model"])
    cached = (run / "teacher_metrics.json").stat().st_mtime_ns
    preds = (run / "teacher_predictions_val.json").stat().st_mtime_ns

    result = fit(cfg, workdir=run)

    assert result.steps == 2
    assert (run / "teacher_metrics.json").stat().st_mtime_ns == cached
    assert (run / "teacher_predictions_val.json").stat().st_mtime_ns == preds
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    setup = [r for r in records if r["type"] == "distill_setup"]
    assert setup[0]["adapters"][0]["adapter"] == "conv1x1 128->256"
    assert setup[0]["teacher"]["missing"]["count"] == 0
    assert sum(r["type"] == "teacher_eval" for r in records) == 1
    steps = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in steps] == [1, 2]
    assert {"distill.cka", "distill.local"} <= set(steps[-1]["losses"])
    assert "cka_inter.0" in steps[-1]["diag"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert "AP" in metrics["bbox"]
    assert "AP" in metrics["teacher"]["bbox"]
    student = load_model_file(run / "model.pt").state_dict
    assert set(student) == set(narrow_student("retinanet_resnet18_fpn", 4).state_dict())


@pytest.mark.parametrize("teacher_bf16", [True, False])
@pytest.mark.parametrize("family", ["retinanet", "gfl", "fasterrcnn"])
def test_distiller_step_under_cpu_bf16_autocast(
    family: str, teacher_bf16: bool, batch: Any
) -> None:
    """``train.cpu_amp``: the loop's CPU autocast reaches the teacher unless teacher_bf16 is off."""
    distiller = make_distiller(family, "resnet18", "resnet18", teacher_bf16=teacher_bf16)
    distiller.train()
    dtypes: list[torch.dtype] = []
    distiller.teacher.backbone.register_forward_hook(
        lambda _m, _i, out: dtypes.append(next(iter(out.values())).dtype)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = distiller(*batch)
    assert dtypes == [torch.bfloat16 if teacher_bf16 else torch.float32]
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)
    assert all(p.grad is None for p in distiller.teacher.parameters())
