"""Validator: every problem of every split, each naming its file and record."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bmgkd_core.data import ValidationIssue, ValidationReport, validate_dataset
from tests.synth import load_split, save_image, save_split

TRAIN = "annotations/train.json"
VAL = "annotations/val.json"


def _only(report: ValidationReport, code: str) -> ValidationIssue:
    found = [issue for issue in report.issues if issue.code == code]
    assert len(found) == 1, report.format_text()
    return found[0]


def _ann_record(data: dict[str, Any], index: int) -> str:
    return f"annotations[{index}] (id={data['annotations'][index]['id']})"


def _first_object(data: dict[str, Any], image_index: int) -> int:
    image_id = data["images"][image_index]["id"]
    return next(i for i, a in enumerate(data["annotations"]) if a["image_id"] == image_id)


# --- clean data ------------------------------------------------------------------------------


def test_validate_dataset_synthetic_sets_have_no_errors(tiny_coco: Path, tiny_voc: Path) -> None:
    for root, fmt in ((tiny_coco, "coco"), (tiny_voc, "voc")):
        report = validate_dataset(root)
        assert report.ok, report.format_text()
        assert report.format == fmt
        assert report.splits["train"]["images"] == 6
        assert report.splits["val"]["crowd"] == 1


def test_validate_dataset_empty_image_is_a_warning_naming_record(tiny_coco: Path) -> None:
    report = validate_dataset(tiny_coco)
    warnings = [w for w in report.warnings if w.code == "image-no-annotations"]
    assert [(w.file, w.record) for w in warnings] == [
        (TRAIN, "images[5] (id=6, file_name=img_005.jpg)"),
        (VAL, "images[3] (id=10, file_name=img_009.jpg)"),
    ]
    assert report.ok


@pytest.mark.parametrize("name", ["raccoon", "coco128"])
def test_validate_dataset_real_datasets_have_zero_errors(shared_datasets: Path, name: str) -> None:
    report = validate_dataset(shared_datasets / name)
    assert report.errors == [], report.format_text()


def test_validate_dataset_sample_set_has_no_issues(sample_dataset: Path) -> None:
    report = validate_dataset(sample_dataset)
    assert report.issues == [], report.format_text()
    assert report.splits["train"]["images"] == 32
    assert report.splits["val"]["images"] == 8


# --- COCO errors -----------------------------------------------------------------------------


def test_validate_dataset_bad_json_reports_line_and_column(tiny_coco_copy: Path) -> None:
    path = tiny_coco_copy / VAL
    lines = path.read_text().splitlines()
    lines[4] = lines[4] + ","  # a trailing comma after a value on line 5
    lines[4] = lines[4].replace(",,", ",}")
    path.write_text("\n".join(lines))
    issue = _only(validate_dataset(tiny_coco_copy), "json-syntax")
    assert issue.file == VAL
    assert re.fullmatch(r"line 5, column \d+", issue.record)


def test_validate_dataset_json_missing_keys_is_shape_error(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "train")
    del data["categories"]
    data["images"] = {"not": "a list"}
    save_split(tiny_coco_copy, "train", data)
    issue = _only(validate_dataset(tiny_coco_copy), "json-shape")
    assert (issue.file, issue.record) == (TRAIN, "top level")
    assert "categories" in issue.message
    assert "images" in issue.message


def test_validate_dataset_image_entry_without_size_is_shape_error(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "train")
    del data["images"][1]["width"]
    save_split(tiny_coco_copy, "train", data)
    report = validate_dataset(tiny_coco_copy)
    issue = _only(report, "json-shape")
    assert (issue.file, issue.record) == (TRAIN, "images[1] (id=2, file_name=img_001.jpg)")
    assert "width" in issue.message
    # its annotations then point to an unknown image: reported too, not hidden
    assert any(i.code == "annotation-image-unknown" for i in report.errors)


def test_validate_dataset_missing_image_names_record(tiny_coco_copy: Path) -> None:
    (tiny_coco_copy / "images" / "img_002.jpg").unlink()
    issue = _only(validate_dataset(tiny_coco_copy), "image-missing")
    assert (issue.file, issue.record) == (TRAIN, "images[2] (id=3, file_name=img_002.jpg)")
    assert "images/img_002.jpg" in issue.message


def test_validate_dataset_unreadable_image_names_record(tiny_coco_copy: Path) -> None:
    (tiny_coco_copy / "images" / "img_007.jpg").write_bytes(b"\x00garbage")
    issue = _only(validate_dataset(tiny_coco_copy), "image-unreadable")
    assert (issue.file, issue.record) == (VAL, "images[1] (id=8, file_name=img_007.jpg)")


def test_validate_dataset_declared_size_mismatch_names_record(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "val")
    data["images"][2]["height"] = 95
    save_split(tiny_coco_copy, "val", data)
    issue = _only(validate_dataset(tiny_coco_copy), "image-size-mismatch")
    assert (issue.file, issue.record) == (VAL, "images[2] (id=9, file_name=img_008.jpg)")
    assert "128x96" in issue.message
    assert "128x95" in issue.message


def test_validate_dataset_size_is_compared_after_exif_orientation(tiny_coco_copy: Path) -> None:
    save_image(
        tiny_coco_copy / "images" / "img_009.jpg",
        np.zeros((96, 128, 3), dtype=np.uint8),
        exif_orientation=6,
    )
    report = validate_dataset(tiny_coco_copy)  # declared 128x96, shown as 96x128
    issue = _only(report, "image-size-mismatch")
    assert issue.record == "images[3] (id=10, file_name=img_009.jpg)"
    data = load_split(tiny_coco_copy, "val")
    data["images"][3].update(width=96, height=128)
    save_split(tiny_coco_copy, "val", data)
    assert validate_dataset(tiny_coco_copy).ok


def test_validate_dataset_box_out_of_bounds_names_annotation(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "train")
    index = _first_object(data, 1)
    data["annotations"][index]["bbox"] = [120, 10, 20, 10]  # x2 = 140 > 128 + 1
    save_split(tiny_coco_copy, "train", data)
    issue = _only(validate_dataset(tiny_coco_copy), "box-out-of-bounds")
    assert (issue.file, issue.record) == (TRAIN, _ann_record(data, index))
    assert "[120, 10, 20, 10]" in issue.message


def test_validate_dataset_box_within_one_pixel_tolerance_is_ok(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "train")
    data["annotations"][_first_object(data, 1)]["bbox"] = [-0.9, -0.5, 129.8, 97.0]
    save_split(tiny_coco_copy, "train", data)
    assert validate_dataset(tiny_coco_copy).ok


def test_validate_dataset_zero_area_box_names_annotation(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "val")
    index = _first_object(data, 2)
    data["annotations"][index]["bbox"] = [10, 10, 5, 0]
    save_split(tiny_coco_copy, "val", data)
    issue = _only(validate_dataset(tiny_coco_copy), "box-degenerate")
    assert (issue.file, issue.record) == (VAL, _ann_record(data, index))


def test_validate_dataset_unknown_category_names_annotation(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "train")
    data["annotations"][3]["category_id"] = 4
    save_split(tiny_coco_copy, "train", data)
    issue = _only(validate_dataset(tiny_coco_copy), "category-unknown")
    assert (issue.file, issue.record) == (TRAIN, _ann_record(data, 3))
    assert "category_id 4" in issue.message


def test_validate_dataset_duplicate_image_id_names_both(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "train")
    data["images"][3]["id"] = 2
    save_split(tiny_coco_copy, "train", data)
    issue = _only(validate_dataset(tiny_coco_copy), "image-id-duplicate")
    assert (issue.file, issue.record) == (TRAIN, "images[3] (id=2, file_name=img_003.jpg)")
    assert "images[1]" in issue.message


def test_validate_dataset_duplicate_annotation_id_names_both(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "val")
    data["annotations"][2]["id"] = data["annotations"][0]["id"]
    save_split(tiny_coco_copy, "val", data)
    issue = _only(validate_dataset(tiny_coco_copy), "annotation-id-duplicate")
    assert (issue.file, issue.record) == (VAL, _ann_record(data, 2))
    assert "annotations[0]" in issue.message


def test_validate_dataset_annotation_of_unknown_image_names_annotation(
    tiny_coco_copy: Path,
) -> None:
    data = load_split(tiny_coco_copy, "val")
    data["annotations"][1]["image_id"] = 345
    save_split(tiny_coco_copy, "val", data)
    issue = _only(validate_dataset(tiny_coco_copy), "annotation-image-unknown")
    assert (issue.file, issue.record) == (VAL, _ann_record(data, 1))
    assert "345" in issue.message


def test_validate_dataset_duplicate_category_id_names_category(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "val")
    data["categories"][2]["id"] = data["categories"][1]["id"]
    save_split(tiny_coco_copy, "val", data)
    report = validate_dataset(tiny_coco_copy)
    issue = _only(report, "category-id-duplicate")
    assert (issue.file, issue.record) == (VAL, "categories[2] (id=5)")


def test_validate_dataset_reports_every_problem_of_every_split(tiny_coco_copy: Path) -> None:
    train = load_split(tiny_coco_copy, "train")
    train["annotations"][0]["category_id"] = 77
    train["annotations"][1]["image_id"] = 999
    train["annotations"][2]["bbox"] = [0, 0, -3, 4]
    save_split(tiny_coco_copy, "train", train)
    (tiny_coco_copy / "images" / "img_008.jpg").unlink()
    report = validate_dataset(tiny_coco_copy)
    codes = sorted(issue.code for issue in report.errors)
    assert codes == [
        "annotation-image-unknown",
        "box-degenerate",
        "category-unknown",
        "image-missing",
    ]
    assert not report.ok


# --- VOC errors ------------------------------------------------------------------------------


def test_validate_dataset_voc_split_names_missing_xml(tiny_voc_copy: Path) -> None:
    split_file = tiny_voc_copy / "ImageSets" / "Main" / "train.txt"
    split_file.write_text(split_file.read_text() + "ghost\n")
    issue = _only(validate_dataset(tiny_voc_copy), "split-xml-missing")
    assert (issue.file, issue.record) == ("ImageSets/Main/train.txt", "line 7")
    assert "Annotations/ghost.xml" in issue.message


def test_validate_dataset_voc_bad_xml_reports_line(tiny_voc_copy: Path) -> None:
    xml = tiny_voc_copy / "Annotations" / "img_007.xml"
    lines = xml.read_text().splitlines()
    lines[3] = lines[3].replace("</filename>", "</filenam>")
    xml.write_text("\n".join(lines))
    issue = _only(validate_dataset(tiny_voc_copy), "xml-syntax")
    assert issue.file == "Annotations/img_007.xml"
    assert re.fullmatch(r"line 4, column \d+", issue.record)


def test_validate_dataset_voc_box_out_of_bounds_names_object(tiny_voc_copy: Path) -> None:
    xml = tiny_voc_copy / "Annotations" / "img_001.xml"
    text = re.sub(r"<xmax>\d+</xmax>", "<xmax>300</xmax>", xml.read_text(), count=1)
    xml.write_text(text)
    issue = _only(validate_dataset(tiny_voc_copy), "box-out-of-bounds")
    assert issue.file == "Annotations/img_001.xml"
    assert re.fullmatch(r"object\[0\] \(name=\w+\)", issue.record)
    assert "xmax=300" in issue.message


def test_validate_dataset_voc_non_numeric_box_is_shape_error(tiny_voc_copy: Path) -> None:
    xml = tiny_voc_copy / "Annotations" / "img_001.xml"
    xml.write_text(re.sub(r"<ymin>\d+</ymin>", "<ymin>top</ymin>", xml.read_text(), count=1))
    issue = _only(validate_dataset(tiny_voc_copy), "xml-shape")
    assert (issue.file, issue.record[:9]) == ("Annotations/img_001.xml", "object[0]")


def test_validate_dataset_voc_missing_image_names_xml(tiny_voc_copy: Path) -> None:
    (tiny_voc_copy / "JPEGImages" / "img_003.jpg").unlink()
    issue = _only(validate_dataset(tiny_voc_copy), "image-missing")
    assert (issue.file, issue.record) == ("Annotations/img_003.xml", "filename")


def test_validate_dataset_voc_size_mismatch_names_xml(tiny_voc_copy: Path) -> None:
    xml = tiny_voc_copy / "Annotations" / "img_002.xml"
    xml.write_text(xml.read_text().replace("<width>128</width>", "<width>64</width>"))
    report = validate_dataset(tiny_voc_copy)
    issue = _only(report, "image-size-mismatch")
    assert (issue.file, issue.record) == ("Annotations/img_002.xml", "size")


def test_validate_dataset_voc_empty_image_is_warning(tiny_voc: Path) -> None:
    warnings = [w for w in validate_dataset(tiny_voc).warnings if w.code == "image-no-annotations"]
    assert [w.file for w in warnings] == ["Annotations/img_005.xml", "Annotations/img_009.xml"]


# --- report ----------------------------------------------------------------------------------


def test_validate_dataset_unknown_layout_is_reported_not_raised(tmp_path: Path) -> None:
    report = validate_dataset(tmp_path)
    issue = _only(report, "layout-unknown")
    assert "JPEGImages" in issue.message
    assert not report.ok
    assert report.format is None


def test_validation_report_format_text_one_line_per_issue(tiny_coco_copy: Path) -> None:
    data = load_split(tiny_coco_copy, "train")
    data["annotations"][3]["category_id"] = 4
    save_split(tiny_coco_copy, "train", data)
    report = validate_dataset(tiny_coco_copy)
    lines = report.format_text().splitlines()
    assert len(lines) == len(report.issues) == 3
    ann_id = data["annotations"][3]["id"]
    expected = f"ERROR {TRAIN}:annotations[3] (id={ann_id}): category_id 4"
    assert any(line.startswith(expected) for line in lines)
    assert sum(line.startswith("WARNING ") for line in lines) == 2


def test_validation_report_to_dict_is_json_and_truncates(tiny_coco_copy: Path) -> None:
    (tiny_coco_copy / "images" / "img_002.jpg").unlink()
    report = validate_dataset(tiny_coco_copy)
    full = json.loads(json.dumps(report.to_dict()))
    assert full["ok"] is False
    assert full["num_errors"] == 1
    assert full["num_warnings"] == 2
    assert full["issues"][0]["code"] == "image-missing"  # errors first
    assert full["issues"][0]["record"] == "images[2] (id=3, file_name=img_002.jpg)"
    assert full["splits"]["train"]["images"] == 6
    short = report.to_dict(max_issues=1)
    assert len(short["issues"]) == 1
    assert short["truncated"] is True
