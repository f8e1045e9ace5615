"""Synthetic detection datasets for tests: coloured rectangles on noise, with matching boxes.

``make_coco_dataset`` writes a tiny COCO-layout dataset; ``write_voc_copy`` converts it to the
Pascal VOC layout (the exact inverse of the VOC loader's conversion), so the two loaders can be
compared on the same data. Everything is deterministic for a given ``seed``.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "CLASS_NAMES",
    "load_split",
    "make_coco_dataset",
    "save_image",
    "save_split",
    "write_voc_copy",
]

# Alphabetical, so COCO's order by category id and VOC's sorted names agree.
CLASS_NAMES = ("bird", "cat", "dog", "fish", "fox", "horse", "owl", "pig", "sheep", "tiger")
_COLOURS = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ],
    dtype=np.uint8,
)


def category_id_of(index: int) -> int:
    """Category id of class ``index`` (0-based): ``3 * index + 2``, i.e. 2, 5, 8, ...

    The ids are ascending but neither contiguous nor starting at 1, so code that confuses
    labels and category ids fails on this data.
    """
    return 3 * index + 2


def make_coco_dataset(
    root: str | Path,
    *,
    n_train: int = 6,
    n_val: int = 4,
    size: tuple[int, int] = (96, 128),
    num_classes: int = 3,
    seed: int = 0,
    with_crowd: bool = True,
    empty_images: int = 1,
) -> Path:
    """Write a tiny COCO-layout dataset and return its root.

    Layout: ``images/img_000.jpg`` ... and ``annotations/{train,val}.json``. Image ids are
    ``1..n_train + n_val`` in file-name order (train first, then val); annotation ids start at
    1001. Every image is ``size = (height, width)`` pixels. Each non-empty image has 1 to 3
    rectangles; classes are assigned round-robin so every class occurs once there are at least
    ``num_classes`` boxes. Class names are :data:`CLASS_NAMES` (alphabetical) with ids from
    :func:`category_id_of`. With ``with_crowd``, the first image of each split also gets one
    ``iscrowd=1`` box. The last ``empty_images`` images of each split have no annotations.
    Boxes have integer pixel coordinates.
    """
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in [1, {len(CLASS_NAMES)}], got {num_classes}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    categories = [
        {"id": category_id_of(k), "name": CLASS_NAMES[k], "supercategory": "thing"}
        for k in range(num_classes)
    ]
    counters = {"image": 0, "ann": 1000, "class": 0}
    for split, count in (("train", n_train), ("val", n_val)):
        images, annotations = [], []
        for j in range(count):
            empty = j >= count - empty_images
            crowd = with_crowd and j == 0 and not empty
            image, anns = _make_image(root, rng, size, counters, num_classes, empty, crowd)
            images.append(image)
            annotations.extend(anns)
        data = {"images": images, "annotations": annotations, "categories": categories}
        save_split(root, split, data)
    return root


def _make_image(
    root: Path,
    rng: np.random.Generator,
    size: tuple[int, int],
    counters: dict[str, int],
    num_classes: int,
    empty: bool,
    crowd: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    height, width = size
    pixels = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
    counters["image"] += 1
    image_id = counters["image"]
    file_name = f"img_{image_id - 1:03d}.jpg"
    annotations = []
    n_objects = 0 if empty else int(rng.integers(1, 4))
    for k in range(n_objects + int(crowd)):
        is_crowd = k == n_objects
        w = int(rng.integers(max(8, width // 6), max(9, width // 2)))
        h = int(rng.integers(max(8, height // 6), max(9, height // 2)))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        label_index = counters["class"] % num_classes
        counters["class"] += 0 if is_crowd else 1
        pixels[y : y + h, x : x + w] = _COLOURS[label_index]
        counters["ann"] += 1
        annotations.append(
            {
                "id": counters["ann"],
                "image_id": image_id,
                "category_id": category_id_of(label_index),
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": int(is_crowd),
            }
        )
    save_image(root / "images" / file_name, pixels)
    image = {"id": image_id, "file_name": file_name, "width": width, "height": height}
    return image, annotations


def save_image(path: Path, pixels: np.ndarray, *, exif_orientation: int | None = None) -> Path:
    """Save ``pixels`` (``[H, W, 3]`` or ``[H, W]`` uint8) with an optional EXIF orientation."""
    image = Image.fromarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    if exif_orientation is not None:
        exif = image.getexif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    image.save(path, **kwargs)
    return path


def load_split(root: Path, split: str) -> dict[str, Any]:
    """Read ``annotations/<split>.json`` of a COCO root."""
    data: dict[str, Any] = json.loads((root / "annotations" / f"{split}.json").read_text())
    return data


def save_split(root: Path, split: str, data: dict[str, Any]) -> None:
    """Write ``annotations/<split>.json`` of a COCO root (indented: one key per line)."""
    text = json.dumps(data, indent=2)
    (root / "annotations" / f"{split}.json").write_text(text + "\n")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_voc_copy(
    coco_root: str | Path, voc_root: str | Path, *, classes_txt: bool = False
) -> Path:
    """Convert a COCO-layout dataset (flat ``images/``) to the Pascal VOC layout.

    The exact inverse of the VOC loader: a COCO box ``[x, y, w, h]`` becomes
    ``xmin = x + 1, ymin = y + 1, xmax = x + w, ymax = y + h``; ``iscrowd`` becomes
    ``difficult``. Image bytes are copied unchanged. With ``classes_txt``, ``classes.txt`` lists
    the category names in id order. Returns ``voc_root``.
    """
    coco_root, voc_root = Path(coco_root), Path(voc_root)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc_root / sub).mkdir(parents=True, exist_ok=True)
    names: dict[int, str] = {}
    for split_file in sorted((coco_root / "annotations").glob("*.json")):
        data = load_split(coco_root, split_file.stem)
        names.update({c["id"]: c["name"] for c in data["categories"]})
        stems = []
        for image in data["images"]:
            stem = Path(image["file_name"]).stem
            stems.append(stem)
            shutil.copyfile(
                coco_root / "images" / image["file_name"],
                voc_root / "JPEGImages" / image["file_name"],
            )
            anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
            _write_voc_xml(voc_root / "Annotations" / f"{stem}.xml", image, anns, names)
        (voc_root / "ImageSets" / "Main" / f"{split_file.stem}.txt").write_text(
            "\n".join(stems) + "\n"
        )
    if classes_txt:
        (voc_root / "classes.txt").write_text("\n".join(names[k] for k in sorted(names)) + "\n")
    return voc_root


def _write_voc_xml(
    path: Path, image: dict[str, Any], anns: list[dict[str, Any]], names: dict[int, str]
) -> None:
    node = ET.Element("annotation")
    ET.SubElement(node, "folder").text = "JPEGImages"
    ET.SubElement(node, "filename").text = image["file_name"]
    size = ET.SubElement(node, "size")
    for key, value in (("width", image["width"]), ("height", image["height"]), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for ann in anns:
        x, y, w, h = ann["bbox"]
        obj = ET.SubElement(node, "object")
        ET.SubElement(obj, "name").text = names[ann["category_id"]]
        ET.SubElement(obj, "difficult").text = str(int(ann.get("iscrowd", 0)))
        box = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(box, key).text = _fmt(value)
    ET.indent(node)
    ET.ElementTree(node).write(path, encoding="utf-8", xml_declaration=True)
