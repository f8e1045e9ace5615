"""Make ``samples/raccoon-mini``: a small COCO-layout sample of the raccoon dataset.

Deterministic: per split, the first N images in sorted file-name order are taken; each is
downscaled (never upscaled) so that its longer side is at most ``--max-side`` px (Lanczos, JPEG
quality ``--quality``, colour mode kept), and its boxes are scaled by the same per-axis factors.
Image and annotation ids are the source ids. The result is validated before the script exits.

Usage: ``python scripts/make_sample.py [--src PATH] [--dst PATH]`` (defaults: the shared raccoon
set and ``samples/raccoon-mini``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO_ROOT.parent / "shared" / "datasets" / "raccoon"
DEFAULT_DST = REPO_ROOT / "samples" / "raccoon-mini"

README = """\
# raccoon-mini — a small sample of the raccoon detection dataset

A tiny, real (not synthetic) detection set for the README commands, the tests and quick smoke
runs when the full datasets in `../shared/datasets` are not available.

- **Source:** `raccoon/` from the shared datasets (GitHub `datitran/raccoon_dataset`, commit
  `93938849301895fb73909842ba04af9b602f677a`, converted to COCO JSON there; see its README).
- **License:** MIT, Copyright (c) 2017 Dat Tran. The full text is in `LICENSE` beside this file and
  must travel with the data. The photos come from web search and Pixabay; use them for research
  and tests only.
- **Task:** object detection, 1 class (`1 raccoon`).

## Contents

| split | images | boxes |
|---|---|---|
{rows}

Layout (COCO JSON, the same as the source): `images/*.jpg`, `annotations/train.json`,
`annotations/val.json`; `file_name` is relative to `images/`, `bbox` is `[x, y, w, h]` in pixels.

## How it was made

`python scripts/make_sample.py` (deterministic):

1. Per split, the first {n_train} (train) and {n_val} (val) images of the source split in sorted
   file-name order were taken.
2. Each image was downscaled with Lanczos so that its longer side is at most {max_side} px (smaller
   images were kept at their size), and saved as JPEG with quality {quality}. The colour mode was
   kept (grayscale images stay grayscale). The source has no EXIF orientation tags.
3. Boxes were scaled by the same per-axis factors (`new_width / width`, `new_height / height`),
   rounded to 0.01 px and clipped to the image; `area = w * h`. Image, annotation and category
   ids are the source's.
4. The result was checked with `bmgkd_core.data.validate_dataset`: 0 errors.
"""


def _scale_image(
    src: Path, dst: Path, max_side: int, quality: int
) -> tuple[int, int, float, float]:
    with Image.open(src) as opened:
        image = ImageOps.exif_transpose(opened)
        width, height = image.size
        scale = min(1.0, max_side / max(width, height))
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if new_size != (width, height):
            image = image.resize(new_size, Image.Resampling.LANCZOS)
        image.save(dst, format="JPEG", quality=quality)
    return new_size[0], new_size[1], new_size[0] / width, new_size[1] / height


def _scale_box(bbox: list[float], sx: float, sy: float, size: tuple[int, int]) -> list[float]:
    x1, y1 = max(0.0, bbox[0] * sx), max(0.0, bbox[1] * sy)
    x2 = min(float(size[0]), (bbox[0] + bbox[2]) * sx)
    y2 = min(float(size[1]), (bbox[1] + bbox[3]) * sy)
    return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def make_split(
    src: Path, dst: Path, split: str, count: int, args: argparse.Namespace
) -> dict[str, Any]:
    data = json.loads((src / "annotations" / f"{split}.json").read_text())
    images = sorted(data["images"], key=lambda im: im["file_name"])[:count]
    out_images, out_anns = [], []
    for image in images:
        width, height, sx, sy = _scale_image(
            src / "images" / image["file_name"],
            dst / "images" / image["file_name"],
            args.max_side,
            args.quality,
        )
        out_images.append(
            {"id": image["id"], "file_name": image["file_name"], "width": width, "height": height}
        )
        for ann in (a for a in data["annotations"] if a["image_id"] == image["id"]):
            bbox = _scale_box(ann["bbox"], sx, sy, (width, height))
            area = round(bbox[2] * bbox[3], 2)
            out_anns.append({**ann, "bbox": bbox, "area": area})
    info = {
        "description": f"raccoon-mini ({split}): first {count} images of raccoon/{split}, "
        f"longer side <= {args.max_side} px"
    }
    return {
        "info": info,
        "licenses": [],
        "categories": data["categories"],
        "images": out_images,
        "annotations": out_anns,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--dst", type=Path, default=DEFAULT_DST)
    parser.add_argument("--n-train", type=int, default=32)
    parser.add_argument("--n-val", type=int, default=8)
    parser.add_argument("--max-side", type=int, default=320)
    parser.add_argument("--quality", type=int, default=85)
    args = parser.parse_args(argv)
    if args.dst.exists():
        shutil.rmtree(args.dst)
    (args.dst / "images").mkdir(parents=True)
    (args.dst / "annotations").mkdir()
    rows = []
    for split, count in (("train", args.n_train), ("val", args.n_val)):
        data = make_split(args.src, args.dst, split, count, args)
        text = json.dumps(data, indent=1) + "\n"
        (args.dst / "annotations" / f"{split}.json").write_text(text)
        rows.append(f"| {split} | {len(data['images'])} | {len(data['annotations'])} |")
    shutil.copyfile(args.src / "LICENSE", args.dst / "LICENSE")
    readme = README.format(
        rows="\n".join(rows),
        n_train=args.n_train,
        n_val=args.n_val,
        max_side=args.max_side,
        quality=args.quality,
    )
    (args.dst / "README.md").write_text(readme)

    sys.path.insert(0, str(REPO_ROOT))
    from bmgkd_core.data import validate_dataset

    report = validate_dataset(args.dst)
    print(report.format_text() or "no issues")
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
