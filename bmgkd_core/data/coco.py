"""COCO JSON layout: ``<root>/images/`` and ``<root>/annotations/<split>.json``.

``file_name`` is relative to ``images/``; ``bbox`` is ``[x, y, w, h]`` in pixels with a 0-based
continuous origin, converted to xyxy ``[x, y, x + w, y + h]``. Category ids may be any integers:
categories sorted by id get labels ``1..K``. ``iscrowd=1`` boxes are kept as ignore regions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmgkd_core.data.records import LabelMap, make_array_record, unsafe_relative_path
from bmgkd_core.data.validate import IssueSink, ParsedSplit, check_box

__all__ = ["list_coco_splits", "parse_coco_split"]

_TOP_KEYS = ("images", "annotations", "categories")


@dataclass
class _Image:
    """An entry of ``images`` while annotations are attached to it."""

    image_id: int
    file_name: str
    size: tuple[int, int]  # (width, height)
    record: str
    objects: list[tuple[list[float], int, bool, float]] = field(default_factory=list)
    annotated: bool = False


def list_coco_splits(root: Path) -> list[str]:
    """Return the split names of a COCO root (the stems of ``annotations/*.json``), sorted."""
    return sorted(p.stem for p in (root / "annotations").glob("*.json"))


def parse_coco_split(root: Path, split: str, sink: IssueSink) -> ParsedSplit:
    """Parse ``annotations/<split>.json`` of a COCO root, reporting problems to ``sink``.

    Args:
        root: Dataset root.
        split: Split name.
        sink: Receives every problem (a strict sink raises ``DataError`` on structural ones).

    Returns:
        The records (images in file order), the label map and where each image is declared.
    """
    rel = f"annotations/{split}.json"
    empty = ParsedSplit([], LabelMap((), ()))
    if not (root / rel).is_file():
        sink.error(
            "split-missing", rel, "", f"split {split!r} not found; have {list_coco_splits(root)}"
        )
        return empty
    data = _read_json(root / rel, rel, sink)
    if data is None:
        return empty
    label_map = _parse_categories(data["categories"], rel, sink)
    images = _parse_images(root, data["images"], rel, sink)
    _parse_annotations(data["annotations"], images, label_map, rel, sink)
    records, sources = [], []
    for img in images.values():
        if not img.annotated:
            sink.warning("image-no-annotations", rel, img.record, "image has no annotations (kept)")
        path = root / "images" / img.file_name
        records.append(make_array_record(img.image_id, img.file_name, path, img.size, img.objects))
        sources.append((rel, img.record))
    return ParsedSplit(records, label_map, sources)


def _read_json(path: Path, rel: str, sink: IssueSink) -> dict[str, list[Any]] | None:
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        sink.error(
            "json-syntax", rel, f"line {exc.lineno}, column {exc.colno}", f"invalid JSON: {exc.msg}"
        )
        return None
    except (UnicodeDecodeError, OSError) as exc:
        sink.error("file-unreadable", rel, "", f"cannot read the file: {exc}")
        return None
    except RecursionError:
        sink.error("json-syntax", rel, "", "invalid JSON: nested too deeply")
        return None
    if not isinstance(data, dict):
        sink.error(
            "json-shape",
            rel,
            "top level",
            f"expected an object with keys {list(_TOP_KEYS)}, got {type(data).__name__}",
        )
        return None
    bad = [k for k in _TOP_KEYS if not isinstance(data.get(k), list)]
    if bad:
        got = {k: type(data[k]).__name__ for k in bad if k in data}
        sink.error(
            "json-shape",
            rel,
            "top level",
            f"not a COCO detection file: missing or non-list keys {bad} (got {got or 'nothing'})",
        )
        return None
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def _is_size(value: Any) -> bool:
    return _is_number(value) and value > 0 and float(value).is_integer()


def _parse_categories(items: list[Any], rel: str, sink: IssueSink) -> LabelMap:
    found: dict[int, str] = {}
    names: set[str] = set()
    for i, cat in enumerate(items):
        record = f"categories[{i}]"
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            sink.error("json-shape", rel, record, f"category needs an integer 'id', got {cat!r}")
            continue
        cat_id, name = cat["id"], cat.get("name")
        record = f"categories[{i}] (id={cat_id})"
        if not isinstance(name, str) or not name:
            sink.error("json-shape", rel, record, f"category needs a 'name' string, got {name!r}")
            continue
        if cat_id in found:
            sink.error("category-id-duplicate", rel, record, f"category id {cat_id} repeats")
            continue
        if name in names:
            sink.warning("category-name-duplicate", rel, record, f"category name {name!r} repeats")
        found[cat_id] = name
        names.add(name)
    if not items:
        sink.error("json-shape", rel, "categories", "the categories list is empty")
    ids = sorted(found)
    return LabelMap(tuple(found[i] for i in ids), tuple(ids))


def _parse_images(root: Path, items: list[Any], rel: str, sink: IssueSink) -> dict[int, _Image]:
    images: dict[int, _Image] = {}
    for i, img in enumerate(items):
        if not isinstance(img, dict):
            sink.error("json-shape", rel, f"images[{i}]", f"expected an object, got {img!r}")
            continue
        record = f"images[{i}] (id={img.get('id')}, file_name={img.get('file_name')})"
        bad = [k for k in ("id",) if not _is_int(img.get(k))]
        bad += [k for k in ("width", "height") if not _is_size(img.get(k))]
        if not isinstance(img.get("file_name"), str) or not img.get("file_name"):
            bad.append("file_name")
        if bad:
            got = {k: img.get(k) for k in bad}
            sink.error("json-shape", rel, record, f"missing or invalid keys {got}")
            continue
        unsafe = unsafe_relative_path(img["file_name"])
        if unsafe:
            sink.error("json-shape", rel, record, f"file_name {unsafe}")
            continue
        if img["id"] in images:
            first = images[img["id"]].record
            sink.error("image-id-duplicate", rel, record, f"image id {img['id']} repeats {first}")
            continue
        if not (root / "images" / img["file_name"]).is_file():
            sink.error(
                "image-missing", rel, record, f"image file images/{img['file_name']} not found"
            )
        size = (int(img["width"]), int(img["height"]))
        images[img["id"]] = _Image(img["id"], img["file_name"], size, record)
    return images


def _parse_annotations(
    items: list[Any], images: dict[int, _Image], label_map: LabelMap, rel: str, sink: IssueSink
) -> None:
    seen: dict[Any, int] = {}
    for i, ann in enumerate(items):
        if not isinstance(ann, dict):
            sink.error("json-shape", rel, f"annotations[{i}]", f"expected an object, got {ann!r}")
            continue
        ann_id = ann.get("id")
        record = f"annotations[{i}] (id={ann_id})"
        if _is_int(ann_id) and ann_id in seen:
            sink.error(
                "annotation-id-duplicate",
                rel,
                record,
                f"annotation id {ann_id} repeats annotations[{seen[ann_id]}]",
            )
        elif _is_int(ann_id):
            seen[ann_id] = i
        _parse_annotation(ann, images, label_map, (rel, record), sink)


def _parse_annotation(
    ann: dict[str, Any],
    images: dict[int, _Image],
    label_map: LabelMap,
    where: tuple[str, str],
    sink: IssueSink,
) -> None:
    bbox, crowd, area = ann.get("bbox"), ann.get("iscrowd", 0), ann.get("area")
    bad = {k: ann.get(k) for k in ("id", "image_id", "category_id") if not _is_int(ann.get(k))}
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        bad["bbox"] = bbox
    if crowd not in (0, 1):
        bad["iscrowd"] = crowd
    if area is not None and not (_is_number(area) and area >= 0):
        bad["area"] = area
    if bad:
        sink.error("json-shape", *where, f"missing or invalid keys {bad}")
        return
    image = images.get(ann["image_id"])
    if image is None:
        sink.error(
            "annotation-image-unknown", *where, f"image_id {ann['image_id']} is not in images"
        )
        return
    image.annotated = True
    if ann["category_id"] not in label_map.category_ids:
        sink.error(
            "category-unknown", *where, f"category_id {ann['category_id']} is not in categories"
        )
        return
    x, y, w, h = (float(v) for v in ann["bbox"])
    box = check_box([x, y, x + w, y + h], image.size, sink, where, f"bbox {bbox}")
    if box is not None:
        label = label_map.label_of(ann["category_id"])
        box_area = float(area) if area is not None else w * h
        image.objects.append((box, label, bool(crowd), box_area))
