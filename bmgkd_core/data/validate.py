"""Dataset validation: the issue model shared by the parsers, and the validator.

The COCO and VOC parsers report problems to an :class:`IssueSink`. :func:`validate_dataset`
collects every issue of every split (and also opens each image header to check that it is readable
and that its size after EXIF orientation matches the declared one; pixels are not decoded), while
:func:`~bmgkd_core.data.dataset.load_dataset` uses a strict sink that raises
:class:`~bmgkd_core.errors.DataError` on the first structural problem and repairs the rest (boxes
are clipped to the image; boxes without area are dropped).

This module, the parsers and :mod:`bmgkd_core.data.records` never import torch or torchvision
(an import-linter contract and ``tests/core/test_boundaries.py`` check it), so the API process
can validate uploads with this validator.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bmgkd_core.data.records import (
    ArrayRecord,
    DatasetFormat,
    LabelMap,
    detect_format,
    read_image_size,
)
from bmgkd_core.errors import DataError

__all__ = [
    "BOX_TOLERANCE_PX",
    "REPAIRABLE_CODES",
    "IssueSink",
    "ParsedSplit",
    "Severity",
    "ValidationIssue",
    "ValidationReport",
    "check_box",
    "validate_dataset",
]

logger = logging.getLogger(__name__)

Severity = Literal["error", "warning"]
# Errors that load_dataset repairs instead of raising: clipping and dropping boxes.
REPAIRABLE_CODES = frozenset({"box-out-of-bounds", "box-degenerate"})
BOX_TOLERANCE_PX = 1.0  # boxes may overhang the image border by this much before it is an error


@dataclass(frozen=True)
class ValidationIssue:
    """One problem found in a dataset.

    Attributes:
        severity: ``"error"`` (the data cannot be used as is) or ``"warning"``.
        code: Short stable code, e.g. ``"box-out-of-bounds"``.
        file: File path relative to the dataset root (POSIX separators).
        record: Where in the file, e.g. ``"annotations[12] (id=345)"`` or ``"line 3, column 5"``.
        message: What is wrong, with the offending value.
    """

    severity: Severity
    code: str
    file: str
    record: str
    message: str

    def format_line(self) -> str:
        """Return ``"ERROR <file>:<record>: <message>"`` (``WARNING`` for warnings)."""
        where = f"{self.file}:{self.record}" if self.record else self.file
        return f"{self.severity.upper()} {where}: {self.message} [{self.code}]"

    def to_dict(self) -> dict[str, str]:
        """Return the issue as a JSON-able dict."""
        return {
            "severity": self.severity,
            "code": self.code,
            "file": self.file,
            "record": self.record,
            "message": self.message,
        }


class IssueSink:
    """Receives the issues a parser finds.

    Args:
        strict: When true (loading), an error whose code is not repairable raises
            :class:`DataError` at once; repairable errors and warnings are collected and summarised
            by :meth:`log_summary`. When false (validating), everything is collected.
        root: Dataset root, used to give full paths in raised errors.
    """

    def __init__(self, *, strict: bool, root: Path | None = None) -> None:
        """Create an empty sink; see the class docstring for the arguments."""
        self.strict = strict
        self.root = root
        self.issues: list[ValidationIssue] = []

    def error(self, code: str, file: str, record: str, message: str) -> None:
        """Report an error; raises :class:`DataError` in strict mode unless it is repairable."""
        issue = ValidationIssue("error", code, file, record, message)
        if self.strict and code not in REPAIRABLE_CODES:
            path = self.root / file if self.root is not None else Path(file)
            where = f"{path}:{record}" if record else str(path)
            raise DataError(f"{where}: {message} [{code}]")
        self.issues.append(issue)

    def warning(self, code: str, file: str, record: str, message: str) -> None:
        """Report a warning (never raises)."""
        self.issues.append(ValidationIssue("warning", code, file, record, message))

    def log_summary(self, what: str) -> None:
        """Log one line counting the collected issues per code (used after loading)."""
        errors = [i for i in self.issues if i.severity == "error"]
        if errors:
            counts = Counter(i.code for i in errors)
            logger.warning(
                "%s: repaired %d annotation problems while loading (%s); first: %s; "
                "run validate_dataset for the full list",
                what,
                len(errors),
                ", ".join(f"{code}: {n}" for code, n in sorted(counts.items())),
                errors[0].format_line(),
            )


@dataclass
class ParsedSplit:
    """What a format parser returns for one split.

    Attributes:
        records: One record per image (numpy arrays), in the order of the source.
        label_map: The dataset's label map.
        sources: ``sources[i]`` is ``(file, record)`` naming where ``records[i]`` is declared.
    """

    records: list[ArrayRecord]
    label_map: LabelMap
    sources: list[tuple[str, str]] = field(default_factory=list)


def check_box(
    xyxy: Sequence[float],
    size: tuple[int, int],
    sink: IssueSink,
    where: tuple[str, str],
    shown: str,
) -> list[float] | None:
    """Check one box against its image and return it clipped, or ``None`` to drop it.

    Reports ``box-degenerate`` (zero or negative width or height, or nothing left after clipping)
    and ``box-out-of-bounds`` (overhangs the image by more than ``BOX_TOLERANCE_PX``).

    Args:
        xyxy: The box, xyxy absolute pixels.
        size: ``(width, height)`` of the image.
        sink: Where to report problems.
        where: ``(file, record)`` naming the box.
        shown: The box as written in the source, for messages.
    """
    x1, y1, x2, y2 = xyxy
    width, height = size
    if x2 <= x1 or y2 <= y1:
        sink.error(
            "box-degenerate", *where, f"{shown} has zero or negative area (xyxy {list(xyxy)})"
        )
        return None
    tol = BOX_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        sink.error(
            "box-out-of-bounds",
            *where,
            f"{shown} (xyxy {list(xyxy)}) exceeds the {width}x{height} image by more "
            f"than {tol:g} px",
        )
    clipped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
    clipped += [min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        sink.error("box-degenerate", *where, f"{shown} lies outside the {width}x{height} image")
        return None
    return clipped


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_dataset`.

    Attributes:
        root: The dataset root that was checked.
        format: The detected or given layout, or ``None`` when it could not be detected.
        issues: Every issue, in the order found.
        splits: Per split: ``{"images", "boxes", "crowd"}`` counts of what loads.
        class_counts: Per split: non-crowd boxes per class name, in label order.
    """

    root: str
    format: DatasetFormat | None
    issues: list[ValidationIssue] = field(default_factory=list)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def errors(self) -> list[ValidationIssue]:
        """Issues that make the data unusable as is."""
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[ValidationIssue]:
        """Issues worth a look that do not stop training."""
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings allowed)."""
        return not self.errors

    def format_text(self) -> str:
        """Return one line per issue, ``ERROR <file>:<record>: <message> [<code>]``."""
        return "\n".join(issue.format_line() for issue in self.issues)

    def summary(self) -> str:
        """Return a one-line summary: layout, splits, counts of images, errors and warnings."""
        parts = [
            f"{name}: {c['images']} images, {c['boxes']} boxes" for name, c in self.splits.items()
        ]
        return (
            f"{self.root} ({self.format or 'unknown layout'}): {'; '.join(parts) or 'no splits'}; "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        )

    def to_dict(self, *, max_issues: int | None = None) -> dict[str, Any]:
        """Return the report as a JSON-able dict.

        Args:
            max_issues: Keep at most this many issues (errors first); ``truncated`` says whether
                some were left out. ``None`` keeps all.
        """
        ordered = self.errors + self.warnings
        kept = ordered if max_issues is None else ordered[:max_issues]
        return {
            "root": self.root,
            "format": self.format,
            "ok": self.ok,
            "num_errors": len(self.errors),
            "num_warnings": len(self.warnings),
            "splits": {name: dict(counts) for name, counts in self.splits.items()},
            "class_counts": {name: dict(c) for name, c in self.class_counts.items()},
            "issues": [issue.to_dict() for issue in kept],
            "truncated": len(kept) < len(ordered),
        }


def validate_dataset(
    root: str | Path,
    *,
    format: Literal["auto", "coco", "voc"] = "auto",
    check_images: bool = True,
) -> ValidationReport:
    """Check every split of a COCO or VOC dataset and report every problem.

    Errors: unreadable JSON/XML (with line and column), JSON not of the COCO shape, missing or
    unreadable images, declared size not matching the image (after EXIF orientation), boxes out of
    bounds (by more than ``BOX_TOLERANCE_PX``) or without area, unknown category ids or class
    names, duplicate image or annotation ids, annotations of unknown images, VOC split files naming
    missing XML files. Warnings: images without annotations, repeated category names.

    Args:
        root: Dataset root.
        format: ``"coco"``, ``"voc"`` or ``"auto"``.
        check_images: Open every image header (size and readability); turn off for a quick
            annotation-only check.

    Returns:
        The report; it never raises for problems in the data.
    """
    # Imported here: the parsers build on the issue model defined above.
    from bmgkd_core.data import coco, voc

    root_path = Path(root).expanduser().resolve()
    sink = IssueSink(strict=False, root=root_path)
    report = ValidationReport(root=str(root_path), format=None, issues=sink.issues)
    try:
        fmt: DatasetFormat = detect_format(root_path) if format == "auto" else format
    except DataError as exc:
        sink.error("layout-unknown", ".", "", str(exc))
        return report
    report.format = fmt
    splits = coco.list_coco_splits(root_path) if fmt == "coco" else voc.list_voc_splits(root_path)
    if not splits:
        where = "annotations/" if fmt == "coco" else "ImageSets/Main/"
        sink.error("split-missing", where, "", f"no split files in {where}")
    cache: dict[Path, Any] = {}  # parsed VOC files, shared by the splits
    checked: set[Path] = set()
    for split in splits:
        if fmt == "coco":
            parsed = coco.parse_coco_split(root_path, split, sink)
        else:
            parsed = voc.parse_voc_split(root_path, split, sink, cache=cache)
        report.splits[split] = _count(parsed)
        report.class_counts[split] = _count_classes(parsed)
        if check_images:
            _check_images(root_path, parsed, sink, checked)
    return report


def _count(parsed: ParsedSplit) -> dict[str, int]:
    crowd = sum(int(r.iscrowd.sum()) for r in parsed.records)
    boxes = sum(len(r.boxes) for r in parsed.records)
    return {"images": len(parsed.records), "boxes": boxes - crowd, "crowd": crowd}


def _count_classes(parsed: ParsedSplit) -> dict[str, int]:
    names = parsed.label_map.names
    counts = dict.fromkeys(names, 0)
    for r in parsed.records:
        for label, crowd in zip(r.labels.tolist(), r.iscrowd.tolist(), strict=True):
            if not crowd and 1 <= label <= len(names):
                counts[names[label - 1]] += 1
    return counts


def _check_images(root: Path, parsed: ParsedSplit, sink: IssueSink, checked: set[Path]) -> None:
    """Open each image header once; report unreadable images and size mismatches."""
    for record, (file, where) in zip(parsed.records, parsed.sources, strict=True):
        if record.path in checked or not record.path.is_file():
            continue  # seen in another split, or already reported as missing
        checked.add(record.path)
        shown = record.path.relative_to(root).as_posix()
        try:
            size = read_image_size(record.path)
        except DataError as exc:
            cause = exc.__cause__ or exc
            sink.error("image-unreadable", file, where, f"cannot read image {shown}: {cause}")
            continue
        if size != (record.width, record.height):
            sink.error(
                "image-size-mismatch",
                file,
                where,
                f"image {shown} is {size[0]}x{size[1]} (after EXIF orientation) but "
                f"{record.width}x{record.height} is declared",
            )
