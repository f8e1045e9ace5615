"""Pascal VOC layout: ``JPEGImages/``, ``Annotations/*.xml`` and ``ImageSets/Main/<split>.txt``.

VOC ``<bndbox>`` coordinates are 1-based inclusive pixel indices; they are converted to the
0-based continuous xyxy used everywhere else as ``[xmin - 1, ymin - 1, xmax, ymax]`` (so a box
covering pixel columns 1..10 becomes ``x1=0, x2=10``, width 10). Coordinates are parsed with
``float()``. Objects with ``<difficult>1</difficult>`` are treated like COCO crowd boxes: left out
of training targets and kept as ignore regions for evaluation.

Labels: if ``<root>/classes.txt`` exists its line order defines labels ``1..K``; otherwise the
sorted unique object names over **all** files in ``Annotations/`` do, so every split agrees.
Image ids are the 1-based positions of the XML stems in sorted order over ``Annotations/``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from bmgkd_core.data.records import (
    ArrayRecord,
    LabelMap,
    make_array_record,
    read_image_size,
    unsafe_relative_path,
)
from bmgkd_core.data.validate import IssueSink, ParsedSplit, check_box
from bmgkd_core.errors import DataError

__all__ = ["VocCache", "list_voc_splits", "parse_voc_split"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_COORDS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class _VocObject:
    name: str
    difficult: bool
    coords: tuple[float, float, float, float]
    record: str


@dataclass
class _VocDoc:
    """The parts of one annotation XML that the loader uses."""

    filename: str | None
    size: tuple[int, int] | None  # (width, height); None when absent or zero
    objects: list[_VocObject] = field(default_factory=list)


VocCache = dict[Path, "_VocDoc | None"]
"""Parsed XML files keyed by path (``None``: unreadable), shared between splits."""


def list_voc_splits(root: Path) -> list[str]:
    """Return the split names of a VOC root (stems of ``ImageSets/Main/*.txt``), sorted."""
    return sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))


def parse_voc_split(
    root: Path, split: str, sink: IssueSink, *, cache: VocCache | None = None
) -> ParsedSplit:
    """Parse the split ``ImageSets/Main/<split>.txt`` of a VOC root.

    Args:
        root: Dataset root.
        split: Split name.
        sink: Receives every problem (a strict sink raises ``DataError`` on structural ones).
        cache: Parsed XML files, to share between splits (each file is parsed and reported once).

    Returns:
        The records (in split-file order), the label map and where each image is declared.
    """
    cache = {} if cache is None else cache
    split_rel = f"ImageSets/Main/{split}.txt"
    parsed = ParsedSplit([], _load_label_map(root, sink, cache))
    if not (root / split_rel).is_file():
        have = list_voc_splits(root)
        sink.error("split-missing", split_rel, "", f"split {split!r} not found; have {have}")
        return parsed
    all_stems = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    image_ids = {stem: i + 1 for i, stem in enumerate(all_stems)}
    seen: dict[str, int] = {}
    for line_no, stem in _read_split_file(root / split_rel):
        where = (split_rel, f"line {line_no}")
        if stem in seen:
            sink.error("image-id-duplicate", *where, f"{stem!r} repeats line {seen[stem]}")
            continue
        seen[stem] = line_no
        if stem not in image_ids:
            sink.error("split-xml-missing", *where, f"Annotations/{stem}.xml not found")
            continue
        xml_rel = f"Annotations/{stem}.xml"
        doc = _parse_cached(root, xml_rel, sink, cache)
        if doc is None:
            continue
        record = _to_record(root, xml_rel, doc, image_ids[stem], parsed.label_map, sink)
        if record is not None:
            parsed.records.append(record)
            parsed.sources.append((xml_rel, "size"))
    return parsed


def _read_split_file(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(n, line.split()[0]) for n, line in enumerate(lines, start=1) if line.strip()]


def _load_label_map(root: Path, sink: IssueSink, cache: VocCache) -> LabelMap:
    classes = root / "classes.txt"
    if classes.is_file():
        names: list[str] = []
        for n, line in enumerate(classes.read_text(encoding="utf-8").splitlines(), start=1):
            name = line.strip()
            if name and name in names:
                sink.error("class-duplicate", "classes.txt", f"line {n}", f"{name!r} repeats")
            elif name:
                names.append(name)
    else:
        found: set[str] = set()
        for path in sorted((root / "Annotations").glob("*.xml")):
            doc = _parse_cached(root, f"Annotations/{path.name}", sink, cache)
            if doc is not None:
                found.update(o.name for o in doc.objects)
        names = sorted(found)
    return LabelMap(tuple(names), tuple(range(1, len(names) + 1)))


def _parse_cached(root: Path, xml_rel: str, sink: IssueSink, cache: VocCache) -> _VocDoc | None:
    path = root / xml_rel
    if path not in cache:
        cache[path] = _parse_xml(path, xml_rel, sink)
    return cache[path]


def _parse_xml(path: Path, xml_rel: str, sink: IssueSink) -> _VocDoc | None:
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        line, column = exc.position
        sink.error("xml-syntax", xml_rel, f"line {line}, column {column}", f"invalid XML: {exc}")
        return None
    except OSError as exc:
        sink.error("file-unreadable", xml_rel, "", f"cannot read the file: {exc}")
        return None
    node = tree.getroot()
    doc = _VocDoc(filename=(node.findtext("filename") or "").strip() or None, size=None)
    width, height = node.findtext("size/width"), node.findtext("size/height")
    if width is not None and height is not None:
        try:
            w, h = int(float(width)), int(float(height))
        except ValueError:
            sink.error("xml-shape", xml_rel, "size", f"non-numeric size {width!r}x{height!r}")
        else:
            doc.size = (w, h) if w > 0 and h > 0 else None
    for i, obj in enumerate(node.findall("object")):
        parsed = _parse_object(obj, i, xml_rel, sink)
        if parsed is not None:
            doc.objects.append(parsed)
    return doc


def _parse_object(obj: ET.Element, index: int, xml_rel: str, sink: IssueSink) -> _VocObject | None:
    name = (obj.findtext("name") or "").strip()
    record = f"object[{index}] (name={name})" if name else f"object[{index}]"
    texts = {k: obj.findtext(f"bndbox/{k}") for k in _COORDS}
    difficult = (obj.findtext("difficult") or "0").strip()
    try:
        coords = tuple(float(texts[k] or "") for k in _COORDS)
        is_difficult = bool(int(float(difficult)))
    except ValueError:
        sink.error(
            "xml-shape",
            xml_rel,
            record,
            f"object needs numeric bndbox xmin/ymin/xmax/ymax and difficult, got {texts} "
            f"difficult={difficult!r}",
        )
        return None
    if not name:
        sink.error("xml-shape", xml_rel, record, "object has no <name>")
        return None
    x1, y1, x2, y2 = coords
    return _VocObject(name, is_difficult, (x1, y1, x2, y2), record)


def _find_image(root: Path, stem: str, doc: _VocDoc) -> str | None:
    candidates = [doc.filename] if doc.filename and not unsafe_relative_path(doc.filename) else []
    candidates += [stem + suffix for suffix in _IMAGE_SUFFIXES]
    return next((c for c in candidates if (root / "JPEGImages" / c).is_file()), None)


def _to_record(
    root: Path, xml_rel: str, doc: _VocDoc, image_id: int, label_map: LabelMap, sink: IssueSink
) -> ArrayRecord | None:
    stem = Path(xml_rel).stem
    unsafe = unsafe_relative_path(doc.filename) if doc.filename else None
    if unsafe:
        sink.error("xml-shape", xml_rel, "filename", f"<filename> {unsafe}")
        return None
    file_name = _find_image(root, stem, doc)
    if file_name is None:
        wanted = doc.filename or f"{stem}.jpg"
        sink.error("image-missing", xml_rel, "filename", f"image JPEGImages/{wanted} not found")
        return None
    path = root / "JPEGImages" / file_name
    size = doc.size
    if size is None:  # VOC files without <size>: read the image header
        try:
            size = read_image_size(path)
        except DataError as exc:
            sink.error("image-unreadable", xml_rel, "filename", str(exc))
            return None
    if not doc.objects:
        sink.warning("image-no-annotations", xml_rel, "annotation", "image has no objects (kept)")
    objects: list[tuple[list[float], int, bool, float]] = []
    for obj in doc.objects:
        if obj.name not in label_map.names:
            sink.error(
                "category-unknown", xml_rel, obj.record, f"class {obj.name!r} not in classes.txt"
            )
            continue
        xmin, ymin, xmax, ymax = obj.coords
        shown = f"bndbox (xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g})"
        box = check_box([xmin - 1, ymin - 1, xmax, ymax], size, sink, (xml_rel, obj.record), shown)
        if box is not None:
            area = (box[2] - box[0]) * (box[3] - box[1])
            label = label_map.names.index(obj.name) + 1
            objects.append((box, label, obj.difficult, area))
    return make_array_record(image_id, file_name, path, size, objects)
