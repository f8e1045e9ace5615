"""Loading the frozen teacher: strict, with a key report and a class check against the data.

A teacher is either a ``model.pt`` written by ``bmgkd train`` (it names its architecture and
classes) or a plain torchvision ``state_dict`` together with ``distill.teacher_arch``. Files are
read through :mod:`bmgkd_core.train.checkpoint` (``weights_only=True``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from bmgkd_core.config import DistillConfig, KDConfig
from bmgkd_core.errors import CheckpointError, ConfigError, DataError
from bmgkd_core.models import build_detector, split_arch
from bmgkd_core.train.checkpoint import ModelFile, load_model_file, load_state_dict_file

__all__ = [
    "TeacherReport",
    "check_same_family",
    "check_teacher",
    "inspect_teacher",
    "load_teacher",
]

_SHOWN_KEYS = 5
# The parameter whose first dimension gives the class count (RetinaNet: x anchors per location).
_CLS_BIAS_KEY = {
    "retinanet": "head.classification_head.cls_logits.bias",
    "gfl": "head.cls_logits.bias",
    "fasterrcnn": "roi_heads.box_predictor.cls_score.bias",
}


@dataclass(frozen=True)
class TeacherReport:
    """What was loaded as the teacher and how its keys matched the built model.

    Attributes:
        path: The teacher file.
        kind: ``"model_file"`` (a bmgkd ``model.pt``) or ``"state_dict"`` (plain torchvision).
        arch: The teacher architecture.
        num_classes: Model classes including background.
        class_names: The teacher's class names (``None`` for a plain state dict).
        matched: Number of keys present in both with equal shapes.
        missing: Model keys absent from the file (all of them).
        unexpected: File keys the model does not have.
        shape_mismatched: ``"key: file shape vs model shape"`` entries.
    """

    path: str
    kind: Literal["model_file", "state_dict"]
    arch: str
    num_classes: int
    class_names: tuple[str, ...] | None
    matched: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatched: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Every key matched."""
        return not (self.missing or self.unexpected or self.shape_mismatched)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: counts plus the first few names of each mismatch."""
        out = asdict(self)
        for key in ("missing", "unexpected", "shape_mismatched"):
            names = list(out.pop(key))
            out[key] = {"count": len(names), "first": names[:_SHOWN_KEYS]}
        out["class_names"] = None if self.class_names is None else list(self.class_names)
        return out

    def format_text(self) -> str:
        """One-paragraph human summary (printed by ``bmgkd distill`` and ``bmgkd preflight``)."""
        lines = [
            f"teacher {self.path} ({self.kind}, {self.arch}, {self.num_classes - 1} classes): "
            f"{self.matched} keys matched, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.shape_mismatched)} shape-mismatched"
        ]
        for label, names in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape-mismatched", self.shape_mismatched),
        ):
            if names:
                more = f" (+{len(names) - _SHOWN_KEYS} more)" if len(names) > _SHOWN_KEYS else ""
                lines.append(f"  {label}: {', '.join(names[:_SHOWN_KEYS])}{more}")
        return "\n".join(lines)


def check_same_family(teacher_arch: str, student_arch: str) -> str:
    """Return the shared detector family, or raise ``ConfigError`` naming both architectures."""
    teacher_family, _ = split_arch(teacher_arch)
    student_family, _ = split_arch(student_arch)
    if teacher_family != student_family:
        raise ConfigError(
            f"teacher {teacher_arch!r} is a {teacher_family} detector but the student "
            f"{student_arch!r} is a {student_family}; BMGKD pairs predictions anchor by anchor, "
            "so teacher and student must be the same family (backbones may differ)"
        )
    return student_family


def load_teacher(
    kd: KDConfig,
    *,
    student_arch: str,
    class_names: Sequence[str],
    image_size: int,
) -> tuple[nn.Module, TeacherReport]:
    """Build the teacher, load its weights strictly and check it against the dataset's classes.

    The teacher is built with the student's ``image_size`` (its own transform is only used when
    it is evaluated on its own; during distillation it sees the student's transformed batch).
    Building it does not advance the global RNG.

    Args:
        kd: The distillation config (``teacher``, ``teacher_arch``).
        student_arch: The student architecture (the families must match).
        class_names: The dataset's class names (labels ``1..K``).
        image_size: Longer image side of the run.

    Returns:
        The teacher in eval mode on the CPU with ``requires_grad=False`` everywhere, and the
        key report.

    Raises:
        ConfigError: family or class-count mismatch, or a plain state dict without
            ``teacher_arch``.
        DataError: the teacher's class names differ from the dataset's.
        CheckpointError: unreadable file, or keys/shapes that do not match (named).
    """
    num_classes = len(class_names) + 1
    model_file = _read_model_file(kd.teacher)
    if model_file is not None:
        arch = model_file.arch
        if kd.teacher_arch is not None and kd.teacher_arch != arch:
            raise ConfigError(
                f"distill.teacher_arch={kd.teacher_arch!r} but {kd.teacher} is a {arch!r} model"
            )
        check_same_family(arch, student_arch)
        _check_model_file_classes(model_file, class_names, kd.teacher)
        state_dict: Mapping[str, torch.Tensor] = model_file.state_dict
    else:
        if kd.teacher_arch is None:
            raise ConfigError(
                f"{kd.teacher} is a plain state dict (not a bmgkd model.pt); "
                "give its architecture with distill.teacher_arch / --teacher-arch"
            )
        arch = kd.teacher_arch
        check_same_family(arch, student_arch)
        state_dict = load_state_dict_file(kd.teacher)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: keep the RNG
        teacher = build_detector(arch, num_classes, image_size=image_size)
    if model_file is None:
        _check_state_dict_classes(teacher, state_dict, arch, num_classes, kd.teacher)
    report = _key_report(teacher, state_dict, kd, arch, num_classes, model_file)
    if not report.ok:
        raise CheckpointError(f"weights do not match the teacher model:\n{report.format_text()}")
    teacher.load_state_dict(state_dict, strict=True)
    teacher.requires_grad_(False)
    return teacher.eval(), report


def check_teacher(cfg: DistillConfig) -> TeacherReport:
    """Load ``cfg.distill``'s teacher once against the training split's classes, then drop it.

    This is what ``bmgkd distill`` prints before training.

    Raises:
        ConfigError: ``cfg.distill`` is not set, or as :func:`load_teacher`.
        DataError, CheckpointError: as :func:`load_teacher` (and an unreadable dataset).
    """
    from bmgkd_core.data import load_dataset

    if cfg.distill is None:
        raise ConfigError("no teacher: the run config has no distill section")
    d = cfg.data
    names = load_dataset(d.root, d.train_split, format=d.format).label_map.names
    _, report = load_teacher(
        cfg.distill, student_arch=cfg.model.arch, class_names=names, image_size=d.image_size
    )
    return report


def inspect_teacher(
    path: str,
    *,
    arch: str | None = None,
    class_names: Sequence[str] | None = None,
) -> TeacherReport:
    """Check a teacher file on its own, before any dataset is involved (the upload check).

    The file is read with ``weights_only=True``, the architecture is built and the keys are
    compared strictly (names and shapes). A ``model.pt`` names its architecture and classes; a
    plain torchvision state dict needs ``arch`` and ``class_names``.

    Args:
        path: The checkpoint file.
        arch: The architecture; must match a ``model.pt``'s own.
        class_names: The teacher's classes (labels ``1..K``); must match a ``model.pt``'s own.

    Returns:
        The key report (every key matched).

    Raises:
        ConfigError: unknown or mismatching architecture, missing ``arch``/``class_names`` for a
            plain state dict, or a class count the weights do not have.
        DataError: ``class_names`` differ from a ``model.pt``'s.
        CheckpointError: unreadable file, or keys/shapes that do not match (named).
    """
    model_file = _read_model_file(path)
    if model_file is not None:
        if arch is not None and arch != model_file.arch:
            raise ConfigError(f"arch={arch!r} but {path} is a {model_file.arch!r} model")
        if class_names is not None:
            _check_model_file_classes(model_file, class_names, path)
        arch, names = model_file.arch, model_file.class_names
        state_dict: Mapping[str, torch.Tensor] = model_file.state_dict
    else:
        if arch is None or not class_names:
            raise ConfigError(
                f"{path} is a plain state dict (not a bmgkd model.pt); "
                "give its architecture (arch) and class names (class_names)"
            )
        names = tuple(class_names)
        state_dict = load_state_dict_file(path)
    kd = KDConfig(teacher=path, teacher_arch=arch)  # validates the architecture name
    num_classes = len(names) + 1
    with torch.random.fork_rng(devices=[]):
        model = build_detector(
            arch, num_classes, image_size=model_file.image_size if model_file else 512
        )
    if model_file is None:
        _check_state_dict_classes(model, state_dict, arch, num_classes, path)
    report = _key_report(model, state_dict, kd, arch, num_classes, model_file)
    if model_file is None:
        report = replace(report, class_names=names)
    if not report.ok:
        raise CheckpointError(f"weights do not match {arch}:\n{report.format_text()}")
    return report


def _read_model_file(path: str) -> ModelFile | None:
    """The ``model.pt`` contents, or ``None`` when the file is readable but not a model file."""
    try:
        return load_model_file(path)
    except CheckpointError as exc:
        if "not a bmgkd model file" in str(exc):
            return None
        raise


def _check_model_file_classes(mf: ModelFile, class_names: Sequence[str], path: str) -> None:
    names = tuple(class_names)
    if mf.num_classes != len(names) + 1:
        raise ConfigError(
            f"teacher {path} was trained on {mf.num_classes - 1} classes "
            f"{list(mf.class_names)[:10]} but the dataset has {len(names)} {list(names)[:10]}"
        )
    if mf.class_names != names:
        diffs = [
            f"label {i}: teacher {t!r} vs data {d!r}"
            for i, (t, d) in enumerate(zip(mf.class_names, names, strict=True), start=1)
            if t != d
        ]
        raise DataError(f"teacher {path} classes differ from the dataset's: {'; '.join(diffs[:5])}")


def _check_state_dict_classes(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str, num_classes: int, path: str
) -> None:
    family, _ = split_arch(arch)
    key = _CLS_BIAS_KEY[family]
    if key not in state_dict or state_dict[key].dim() != 1:
        return  # the strict key report names it
    rows = int(state_dict[key].shape[0])
    per_class = 1
    if family == "retinanet":
        anchor_generator: Any = model.get_submodule("anchor_generator")
        per_class = int(anchor_generator.num_anchors_per_location()[0])
    if rows % per_class or rows // per_class != num_classes:
        found = rows / per_class
        raise ConfigError(
            f"teacher state dict {path} predicts {found:g} classes ({key} has {rows} rows) but "
            f"the dataset needs {num_classes} ({num_classes - 1} classes + background)"
        )


def _key_report(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    kd: KDConfig,
    arch: str,
    num_classes: int,
    model_file: ModelFile | None,
) -> TeacherReport:
    own = model.state_dict()
    common = sorted(set(own) & set(state_dict))
    mismatched = tuple(
        f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in common
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    return TeacherReport(
        path=kd.teacher,
        kind="state_dict" if model_file is None else "model_file",
        arch=arch,
        num_classes=num_classes,
        class_names=None if model_file is None else model_file.class_names,
        matched=len(common) - len(mismatched),
        missing=tuple(sorted(set(own) - set(state_dict))),
        unexpected=tuple(sorted(set(state_dict) - set(own))),
        shape_mismatched=mismatched,
    )
