"""Dataset API: COCO and VOC layouts, label maps, image decoding, targets, transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision import tv_tensors

from bmgkd_core.data import (
    DetectionDataset,
    build_transforms,
    detect_format,
    load_dataset,
    load_image,
)
from bmgkd_core.errors import ConfigError, DataError
from tests.synth import (
    CLASS_NAMES,
    category_id_of,
    load_split,
    make_coco_dataset,
    save_image,
    save_split,
    write_voc_copy,
)

# --- loading ------------------------------------------------------------------------------


def test_load_dataset_coco_returns_float_image_and_torchvision_target(tiny_coco: Path) -> None:
    dataset = load_dataset(tiny_coco, "train")
    image, target = dataset[0]
    assert len(dataset) == 6
    assert image.dtype == torch.float32
    assert image.shape == (3, 96, 128)
    assert float(image.min()) >= 0.0
    assert float(image.max()) <= 1.0
    assert type(image) is torch.Tensor
    assert type(target["boxes"]) is torch.Tensor
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].shape[1] == 4
    assert target["labels"].dtype == torch.int64
    assert target["image_id"] == 1
    assert target["orig_size"] == (96, 128)


def test_load_dataset_coco_boxes_are_xyxy_from_xywh(tiny_coco: Path) -> None:
    data = load_split(tiny_coco, "train")
    ann = next(a for a in data["annotations"] if a["image_id"] == 2 and not a["iscrowd"])
    x, y, w, h = ann["bbox"]
    _, target = load_dataset(tiny_coco, "train")[1]
    assert [x, y, x + w, y + h] in target["boxes"].tolist()


def test_load_dataset_coco_label_map_sorted_by_category_id(tmp_path: Path) -> None:
    root = make_coco_dataset(tmp_path / "c", n_train=3, n_val=1, num_classes=3)
    data = load_split(root, "train")
    data["categories"].reverse()  # file order must not matter
    save_split(root, "train", data)
    label_map = load_dataset(root, "train").label_map
    assert label_map.names == CLASS_NAMES[:3]
    assert label_map.category_ids == (2, 5, 8)
    assert label_map.label_of(5) == 2
    assert label_map.num_classes == 3


def test_load_dataset_crowd_boxes_not_in_target_but_in_coco_gt(tiny_coco: Path) -> None:
    dataset = load_dataset(tiny_coco, "train")
    record = dataset.records[0]
    assert bool(record.iscrowd.any())
    _, target = dataset[0]
    assert len(target["boxes"]) == int((~record.iscrowd).sum())
    gt = dataset.to_coco_gt()
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 1


def test_load_dataset_empty_image_kept_with_zero_by_four_boxes(tiny_coco: Path) -> None:
    dataset = load_dataset(tiny_coco, "train")
    _, target = dataset[len(dataset) - 1]
    assert target["boxes"].shape == (0, 4)
    assert target["labels"].shape == (0,)


def test_load_dataset_getitem_does_not_mutate_records(tiny_coco: Path) -> None:
    transforms = build_transforms(train=True, image_size=64, hflip_prob=1.0)
    dataset = load_dataset(tiny_coco, "train", transforms=transforms)
    before = dataset.records[1].boxes.clone()
    dataset[1]
    assert torch.equal(dataset.records[1].boxes, before)


def test_to_coco_gt_scored_against_itself_gives_ap_one(tiny_coco: Path) -> None:
    gt_dict = load_dataset(tiny_coco, "val").to_coco_gt()
    assert {c["id"] for c in gt_dict["categories"]} == {2, 5, 8}
    gt = COCO()
    gt.dataset = gt_dict
    gt.createIndex()
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in gt_dict["annotations"]
        if not a["iscrowd"]
    ]
    evaluator = COCOeval(gt, gt.loadRes(dets), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_to_coco_gt_keeps_source_area(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "val")
    data["annotations"][0]["area"] = 12.5  # COCO areas are mask areas, not w*h
    save_split(tiny_coco_copy, "val", data)
    gt = load_dataset(tiny_coco_copy, "val").to_coco_gt()
    assert gt["annotations"][0]["area"] == 12.5


# --- VOC ----------------------------------------------------------------------------------


@pytest.mark.parametrize("classes_txt", [False, True])
def test_load_dataset_coco_and_voc_give_identical_targets(
    tiny_coco: Path, tmp_path: Path, classes_txt: bool
) -> None:
    voc_root = write_voc_copy(tiny_coco, tmp_path / "voc", classes_txt=classes_txt)
    for split in ("train", "val"):
        coco_ds = load_dataset(tiny_coco, split)
        voc_ds = load_dataset(voc_root, split)
        assert voc_ds.format == "voc"
        assert coco_ds.format == "coco"
        assert voc_ds.label_map.names == coco_ds.label_map.names
        assert len(voc_ds) == len(coco_ds)
        for i in range(len(coco_ds)):
            coco_image, coco_target = coco_ds[i]
            voc_image, voc_target = voc_ds[i]
            assert torch.equal(coco_image, voc_image)
            assert torch.equal(coco_target["boxes"], voc_target["boxes"])
            assert torch.equal(coco_target["labels"], voc_target["labels"])
            assert coco_target["image_id"] == voc_target["image_id"]
            assert coco_target["orig_size"] == voc_target["orig_size"]
            assert torch.equal(coco_ds.records[i].iscrowd, voc_ds.records[i].iscrowd)


def test_load_dataset_voc_box_is_one_based_inclusive(tiny_voc_copy: Path) -> None:
    xml = tiny_voc_copy / "Annotations" / "img_000.xml"
    text = xml.read_text()
    start = text.index("<bndbox>")
    end = text.index("</bndbox>") + len("</bndbox>")
    bndbox = "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20.5</ymax></bndbox>"
    xml.write_text(text[:start] + bndbox + text[end:])
    record = load_dataset(tiny_voc_copy, "train").records[0]
    assert record.boxes[0].tolist() == [0.0, 1.0, 10.0, 20.5]


def test_load_dataset_voc_difficult_is_crowd(tiny_voc: Path) -> None:
    dataset = load_dataset(tiny_voc, "train")
    assert bool(dataset.records[0].iscrowd.any())
    assert "<difficult>1</difficult>" in (tiny_voc / "Annotations" / "img_000.xml").read_text()
    gt = dataset.to_coco_gt()
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 1


def test_load_dataset_voc_classes_txt_defines_label_order(tiny_voc_copy: Path) -> None:
    (tiny_voc_copy / "classes.txt").write_text("dog\nbird\ncat\nzebra\n")
    label_map = load_dataset(tiny_voc_copy, "train").label_map
    assert label_map.names == ("dog", "bird", "cat", "zebra")
    assert label_map.category_ids == (1, 2, 3, 4)


def test_load_dataset_voc_names_from_all_splits_so_splits_agree(tmp_path: Path) -> None:
    coco_root = make_coco_dataset(tmp_path / "c", n_train=2, n_val=2, num_classes=1)
    voc_root = write_voc_copy(coco_root, tmp_path / "v")
    xml = voc_root / "Annotations" / "img_002.xml"  # first val image
    xml.write_text(xml.read_text().replace("<name>bird</name>", "<name>yak</name>", 1))
    train, val = load_dataset(voc_root, "train"), load_dataset(voc_root, "val")
    assert train.label_map == val.label_map
    assert train.label_map.names == ("bird", "yak")


def test_load_dataset_voc_unknown_class_raises_naming_object(tiny_voc_copy: Path) -> None:
    (tiny_voc_copy / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match=r"img_000\.xml:object\[\d\] \(name=bird\)"):
        load_dataset(tiny_voc_copy, "train")


def test_load_dataset_voc_without_size_reads_image_header(tiny_voc_copy: Path) -> None:
    xml = tiny_voc_copy / "Annotations" / "img_001.xml"
    text = xml.read_text()
    xml.write_text(text[: text.index("<size>")] + text[text.index("</size>") + 7 :])
    record = load_dataset(tiny_voc_copy, "train").records[1]
    assert (record.width, record.height) == (128, 96)


def test_load_dataset_voc_bad_xml_raises_with_line(tiny_voc_copy: Path) -> None:
    xml = tiny_voc_copy / "Annotations" / "img_007.xml"
    xml.write_text(xml.read_text().replace("</filename>", "</file>"))
    with pytest.raises(DataError, match=r"img_007\.xml:line 4, column \d+: invalid XML"):
        load_dataset(tiny_voc_copy, "val")


# --- layout detection and loading errors -----------------------------------------------------


def test_detect_format_recognises_both_layouts(tiny_coco: Path, tiny_voc: Path) -> None:
    assert detect_format(tiny_coco) == "coco"
    assert detect_format(tiny_voc) == "voc"


def test_load_dataset_unknown_layout_raises_data_error_saying_what_was_expected(
    tmp_path: Path,
) -> None:
    (tmp_path / "pictures").mkdir()
    with pytest.raises(DataError, match=r"annotations/\{train,val\}\.json.*JPEGImages") as info:
        load_dataset(tmp_path, "train")
    assert "pictures/" in str(info.value)


def test_load_dataset_missing_root_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope", "train")


def test_load_dataset_missing_split_raises_naming_file(tiny_coco: Path) -> None:
    with pytest.raises(DataError, match=r"annotations/test\.json.*'test' not found"):
        load_dataset(tiny_coco, "test")


def test_load_dataset_unknown_category_raises_naming_file_and_record(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "train")
    data["annotations"][2]["category_id"] = 99
    save_split(tiny_coco_copy, "train", data)
    ann_id = data["annotations"][2]["id"]
    pattern = rf"train\.json:annotations\[2\] \(id={ann_id}\): category_id 99"
    with pytest.raises(DataError, match=pattern):
        load_dataset(tiny_coco_copy, "train")


def test_load_dataset_bad_json_raises_with_line_and_column(tiny_coco_copy: Path) -> None:
    path = tiny_coco_copy / "annotations" / "val.json"
    path.write_text('{\n  "images": [\n    {"id": 1,,}\n')
    with pytest.raises(DataError, match=r"val\.json:line 3, column 14: invalid JSON"):
        load_dataset(tiny_coco_copy, "val")


def test_load_dataset_box_over_border_is_clipped(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "val")
    first = next(a for a in data["annotations"] if a["image_id"] == 7 and not a["iscrowd"])
    first["bbox"] = [100, 80, 50, 30]  # image is 128x96: overhangs right and bottom
    save_split(tiny_coco_copy, "val", data)
    record = load_dataset(tiny_coco_copy, "val").records[0]
    assert [100.0, 80.0, 128.0, 96.0] in record.boxes.tolist()


def test_load_dataset_zero_area_box_is_dropped(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "val")
    n_before = sum(1 for a in data["annotations"] if a["image_id"] == 7)
    next(a for a in data["annotations"] if a["image_id"] == 7)["bbox"] = [10, 10, 0, 5]
    save_split(tiny_coco_copy, "val", data)
    record = load_dataset(tiny_coco_copy, "val").records[0]
    assert len(record.boxes) == n_before - 1


def test_detection_dataset_size_mismatch_raises_naming_file(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "val")
    data["images"][0]["width"] = 200
    save_split(tiny_coco_copy, "val", data)
    dataset = load_dataset(tiny_coco_copy, "val")
    with pytest.raises(DataError, match=r"img_006\.jpg.*128x96.*declare 200x96"):
        dataset[0]


# --- image decoding --------------------------------------------------------------------------


def _gradient(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 4 % 256, ys * 8 % 256, (xs + ys) % 256], axis=-1).astype(np.uint8)


def test_load_image_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = save_image(tmp_path / "rot.png", _gradient(20, 30), exif_orientation=6)
    image = load_image(path)
    assert image.shape == (3, 30, 20)
    with Image.open(path) as pil:
        expected = np.array(ImageOps.exif_transpose(pil).convert("RGB"))
    assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))


def test_load_image_exif_jpeg_is_rotated(tmp_path: Path) -> None:
    path = save_image(tmp_path / "rot.jpg", _gradient(20, 30), exif_orientation=8)
    assert load_image(path).shape == (3, 30, 20)


@pytest.mark.parametrize(("mode", "suffix"), [("P", ".png"), ("L", ".jpg"), ("RGBA", ".png")])
def test_load_image_palette_gray_rgba_become_rgb(tmp_path: Path, mode: str, suffix: str) -> None:
    path = tmp_path / f"img{suffix}"
    Image.fromarray(_gradient(12, 16)).convert(mode).save(path)
    image = load_image(path)
    assert image.shape == (3, 12, 16)
    assert image.dtype == torch.uint8


def test_load_image_other_format_goes_through_pil(tmp_path: Path) -> None:
    path = tmp_path / "img.bmp"
    Image.fromarray(_gradient(12, 16)).convert("L").save(path)
    assert load_image(path).shape == (3, 12, 16)


def test_load_image_garbage_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"bad\.jpg"):
        load_image(path)


def test_detection_dataset_exif_rotated_image_has_rotated_orig_size(tiny_coco_copy: Path) -> None:
    pixels = np.zeros((96, 128, 3), dtype=np.uint8)
    save_image(tiny_coco_copy / "images" / "img_006.jpg", pixels, exif_orientation=6)
    data = load_split(tiny_coco_copy, "val")
    data["images"][0].update(width=96, height=128)  # declared after EXIF orientation
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 7]
    save_split(tiny_coco_copy, "val", data)
    image, target = load_dataset(tiny_coco_copy, "val")[0]
    assert image.shape == (3, 128, 96)
    assert target["orig_size"] == (128, 96)


# --- transforms ------------------------------------------------------------------------------


def _sample(height: int = 96, width: int = 128) -> tuple[tv_tensors.Image, dict[str, object]]:
    image = tv_tensors.Image(torch.randint(0, 256, (3, height, width), dtype=torch.uint8))
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [100.0, 0.0, 128.0, 2.0]])
    target: dict[str, object] = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": torch.tensor([1, 2]),
        "image_id": 3,
    }
    return image, target


def test_build_transforms_train_resizes_longer_side_and_scales_boxes() -> None:
    transform = build_transforms(train=True, image_size=64, hflip_prob=0.0)
    image, target = transform(*_sample())
    assert image.shape == (3, 48, 64)
    assert image.dtype == torch.float32
    assert float(image.max()) <= 1.0
    # the 28x2 box becomes 14x1: kept (>= 1 px); the first box scales by 0.5
    assert target["boxes"][0].tolist() == [5.0, 10.0, 25.0, 30.0]
    assert target["image_id"] == 3


def test_build_transforms_train_drops_degenerate_boxes_with_labels() -> None:
    transform = build_transforms(train=True, image_size=32, hflip_prob=0.0)
    _, target = transform(*_sample())  # scale 0.25: the 28x2 box becomes 7x0.5
    assert len(target["boxes"]) == 1
    assert target["labels"].tolist() == [1]


def test_build_transforms_train_flip_moves_boxes() -> None:
    transform = build_transforms(train=True, image_size=128, hflip_prob=1.0)
    _, target = transform(*_sample())
    assert target["boxes"][0].tolist() == [128.0 - 50.0, 20.0, 128.0 - 10.0, 60.0]


def test_build_transforms_multi_scale_draws_every_size() -> None:
    transform = build_transforms(train=True, image_size=64, multi_scale=(32, 96), hflip_prob=0.0)
    torch.manual_seed(0)
    sides = {max(transform(*_sample())[0].shape[-2:]) for _ in range(30)}
    assert sides == {32, 64, 96}


def test_build_transforms_does_not_mutate_inputs() -> None:
    image, target = _sample()
    image_before, boxes_before = image.clone(), target["boxes"].clone()  # type: ignore[attr-defined]
    for train in (True, False):
        build_transforms(train=train, image_size=64, hflip_prob=1.0)(image, target)
    assert torch.equal(image, image_before)
    assert torch.equal(target["boxes"], boxes_before)  # type: ignore[arg-type]
    assert len(target["labels"]) == 2  # type: ignore[arg-type]


def test_build_transforms_eval_keeps_size_and_only_scales() -> None:
    image, target = _sample()
    out_image, out_target = build_transforms(train=False, image_size=32)(image, target)
    assert out_image.shape == image.shape
    assert out_image.dtype == torch.float32
    assert torch.allclose(out_image, image.float() / 255)
    assert torch.equal(out_target["boxes"], target["boxes"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 0},
        {"image_size": 64, "multi_scale": (-1,)},
        {"image_size": 64, "hflip_prob": 1.5},
    ],
)
def test_build_transforms_bad_arguments_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        build_transforms(train=True, **kwargs)  # type: ignore[arg-type]


def test_detection_dataset_with_train_transforms_returns_plain_tensors(tiny_coco: Path) -> None:
    transforms = build_transforms(train=True, image_size=64)
    image, target = load_dataset(tiny_coco, "train", transforms=transforms)[0]
    assert type(image) is torch.Tensor
    assert max(image.shape[-2:]) == 64
    assert type(target["boxes"]) is torch.Tensor
    assert target["orig_size"] == (96, 128)


# --- real data -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "split", "file_name"),
    [("raccoon", "train", "raccoon-150.jpg"), ("coco128", "train", "000000000086.jpg")],
)
def test_load_dataset_real_grayscale_image_becomes_rgb(
    shared_datasets: Path, name: str, split: str, file_name: str
) -> None:
    dataset = load_dataset(shared_datasets / name, split)
    index = next(i for i, r in enumerate(dataset.records) if r.file_name == file_name)
    image, target = dataset[index]
    assert image.shape[0] == 3
    assert target["orig_size"] == tuple(image.shape[-2:])


def test_load_dataset_coco128_keeps_crowd_and_original_ids(shared_datasets: Path) -> None:
    dataset = load_dataset(shared_datasets / "coco128", "train")
    assert dataset.label_map.num_classes == 80
    assert sum(int(r.iscrowd.sum()) for r in dataset.records) == 7
    assert len(dataset) == 102


def test_load_dataset_sample_set_loads(sample_dataset: Path) -> None:
    for split, count in (("train", 32), ("val", 8)):
        dataset = load_dataset(sample_dataset, split)
        assert len(dataset) == count
        image, _ = dataset[0]
        assert max(image.shape[-2:]) <= 320


def test_detection_dataset_is_a_torch_dataset(tiny_coco: Path) -> None:
    dataset = load_dataset(tiny_coco, "val")
    assert isinstance(dataset, DetectionDataset)
    assert isinstance(dataset, torch.utils.data.Dataset)


def test_category_id_of_matches_synthetic_files(tiny_coco: Path) -> None:
    ids = [c["id"] for c in load_split(tiny_coco, "train")["categories"]]
    assert ids == [category_id_of(k) for k in range(3)]
