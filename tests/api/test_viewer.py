"""Dashboard data endpoints: dataset images, predictions viewer, comparison, baseline, preflight."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.db.models import Artifact, Dataset, Job, JobKind, JobStatus, Teacher, User
from api.queue import FakeQueue
from api.settings import Settings
from bmgkd_core.config import DistillConfig

Headers = dict[str, str]
ARCH = "retinanet_resnet18_fpn"
CLASSES = ["bird", "cat", "dog"]  # tiny_coco's category ids: 2, 5, 8
CAT_ID = {"bird": 2, "cat": 5, "dog": 8}
# tiny_coco's val split: img_006 (id 7; 3 boxes + a crowd bird [10, 17, 38, 59]),
# img_007 (id 8; bird [31, 7, 69, 34], cat [15, 22, 70, 47]), img_008 (id 9; 3 boxes),
# img_009 (id 10; no boxes).
BIRD_7, CROWD_7 = [72, 59, 114, 94], [10, 17, 38, 59]
BIRD_8, CAT_8 = [31, 7, 69, 34], [15, 22, 70, 47]
METRICS = {"AP": 30.0, "AP50": 50.0, "AP75": 25.0, "APs": None, "APm": 20.0, "APl": 35.0}
TEACHER_METRICS = {**METRICS, "AP": 40.0, "AP50": 60.0}


# --- helpers -----------------------------------------------------------------------------------


def _session(client: TestClient) -> Any:
    return client.app.state.session_factory()  # type: ignore[attr-defined]


def _user_id(client: TestClient, name: str = "alice") -> str:
    with _session(client) as session:
        return str(session.execute(select(User.id).where(User.name == name)).scalar_one())


def _config(*, teacher: bool, preset: str = "bmgkd", **train: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": {"arch": ARCH},
        "data": {"root": "<dataset>", "format": "coco", "image_size": 64, "num_workers": 0},
        "train": {"batch_size": 1, "device": "cpu", **train},
    }
    if teacher:
        raw["distill"] = {"teacher": "<teacher>", "teacher_arch": ARCH, "preset": preset}
    return DistillConfig.model_validate(raw).model_dump(mode="json")


def _teacher_row(client: TestClient, user: str = "alice", arch: str = ARCH) -> str:
    with _session(client) as session:
        teacher = Teacher(
            user_id=_user_id(client, user),
            name="t",
            arch=arch,
            class_names=CLASSES,
            sha256="0" * 64,
            storage_path="teachers/none.pt",
            size_bytes=1,
            load_report={},
        )
        session.add(teacher)
        session.commit()
        return str(teacher.id)


def _job(
    client: TestClient,
    dataset_id: str,
    *,
    kind: JobKind = JobKind.distill,
    teacher_id: str | None = None,
    config: dict[str, Any] | None = None,
    status: JobStatus = JobStatus.succeeded,
    result: dict[str, Any] | None = None,
) -> str:
    with _session(client) as session:
        job = Job(
            user_id=_user_id(client),
            kind=kind,
            dataset_id=dataset_id,
            teacher_id=teacher_id,
            config=config or _config(teacher=teacher_id is not None),
            queue="cpu",
            status=status,
            result=result,
        )
        session.add(job)
        session.commit()
        return str(job.id)


def _artifact(settings: Settings, client: TestClient, job_id: str, name: str, doc: Any) -> None:
    path = settings.runs_dir / job_id / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    data = path.read_bytes()
    with _session(client) as session:
        session.add(
            Artifact(
                job_id=job_id,
                name=name,
                path=str(path.relative_to(settings.data_dir)),
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
        session.commit()


def _det(image_id: int, xyxy: Sequence[float], cls: str, score: float) -> dict[str, Any]:
    x1, y1, x2, y2 = xyxy
    return {
        "image_id": image_id,
        "category_id": CAT_ID[cls],
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "score": score,
    }


@pytest.fixture
def distill_job(client: TestClient, settings: Settings, alice: Headers, dataset_id: str) -> str:
    """A succeeded distill job whose student misses img_007's cat that the teacher finds."""
    teacher_id = _teacher_row(client)
    job_id = _job(
        client,
        dataset_id,
        teacher_id=teacher_id,
        result={
            "metrics": {"bbox": METRICS, "teacher": {"bbox": TEACHER_METRICS}},
            "params": {"student": 1000, "teacher": 2000},
        },
    )
    student = [
        _det(7, BIRD_7, "bird", 0.9),
        _det(8, BIRD_8, "bird", 0.8),
        _det(8, CAT_8, "cat", 0.3),  # found, but below the 0.5 score a match needs
        _det(8, CAT_8, "dog", 0.9),  # right place, wrong class
        {"image_id": 8, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.9},  # unknown class
        {"image_id": 8, "bbox": "broken"},
    ]
    teacher = [
        _det(7, BIRD_7, "bird", 0.95),
        _det(7, CROWD_7, "bird", 0.95),  # a crowd box: never a miss
        _det(8, BIRD_8, "bird", 0.9),
        _det(8, CAT_8, "cat", 0.9),
    ]
    _artifact(settings, client, job_id, "predictions_val.json", student)
    _artifact(settings, client, job_id, "teacher_predictions_val.json", teacher)
    return job_id


# --- dataset images ----------------------------------------------------------------------------


def test_dataset_image_served_with_private_cache_header(
    client: TestClient, alice: Headers, dataset_id: str, tiny_coco: Path
) -> None:
    r = client.get(f"/api/v1/datasets/{dataset_id}/images/images/img_006.jpg", headers=alice)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["cache-control"] == "private, max-age=3600"
    assert r.content == (tiny_coco / "images" / "img_006.jpg").read_bytes()


@pytest.mark.parametrize(
    "file_path",
    [
        "images/..%2Fannotations%2Fval.json",
        "images/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
        "annotations/val.json",
        "images/",
        "images/nope.jpg",
        "images/img_006.jpg%00.png",
        "%2Fetc%2Fpasswd",
    ],
)
def test_dataset_image_outside_image_folders_is_404(
    client: TestClient, alice: Headers, dataset_id: str, file_path: str
) -> None:
    r = client.get(f"/api/v1/datasets/{dataset_id}/images/{file_path}", headers=alice)
    assert r.status_code == 404, (file_path, r.text)


def test_dataset_image_of_another_user_is_404(
    client: TestClient, bob: Headers, dataset_id: str
) -> None:
    r = client.get(f"/api/v1/datasets/{dataset_id}/images/images/img_006.jpg", headers=bob)
    assert r.status_code == 404


# --- predictions -------------------------------------------------------------------------------


def test_predictions_items_have_gt_student_teacher_with_class_names(
    client: TestClient, alice: Headers, dataset_id: str, distill_job: str
) -> None:
    r = client.get(f"/api/v1/jobs/{distill_job}/predictions?sort=name", headers=alice)
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] == 4
    items = {it["file_name"]: it for it in page["items"]}
    assert list(items) == ["img_006.jpg", "img_007.jpg", "img_008.jpg", "img_009.jpg"]
    it = items["img_007.jpg"]
    assert (it["image_id"], it["width"], it["height"]) == (8, 128, 96)
    assert it["url"] == f"/api/v1/datasets/{dataset_id}/images/images/img_007.jpg"
    assert it["gt"] == [[*BIRD_8, "bird"], [*CAT_8, "cat"]]
    # best score first; the unknown category and the malformed entry are dropped
    assert it["student"] == [[*CAT_8, 0.9, "dog"], [*BIRD_8, 0.8, "bird"], [*CAT_8, 0.3, "cat"]]
    assert it["teacher"] == [[*BIRD_8, 0.9, "bird"], [*CAT_8, 0.9, "cat"]]
    assert items["img_006.jpg"]["gt"][-1] == [*CROWD_7, "bird"]  # crowd boxes are shown
    assert items["img_009.jpg"]["gt"] == items["img_009.jpg"]["student"] == []
    image = client.get(it["url"], headers=alice)
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"


def test_predictions_sort_misses_puts_teacher_found_student_missed_first(
    client: TestClient, alice: Headers, distill_job: str
) -> None:
    r = client.get(f"/api/v1/jobs/{distill_job}/predictions", headers=alice)
    assert r.status_code == 200
    items = r.json()["items"]
    assert [(it["file_name"], it["misses"]) for it in items] == [
        ("img_007.jpg", 1),  # the cat: teacher 0.9, student only 0.3 / wrong class
        ("img_006.jpg", 0),  # the crowd bird the student misses does not count
        ("img_008.jpg", 0),
        ("img_009.jpg", 0),
    ]


def test_predictions_min_score_limit_offset_filter_the_page(
    client: TestClient, alice: Headers, distill_job: str
) -> None:
    url = f"/api/v1/jobs/{distill_job}/predictions"
    r = client.get(url, params={"min_score": 0.5, "limit": 1}, headers=alice)
    assert r.status_code == 200
    page = r.json()
    assert page["total"] == 4 and len(page["items"]) == 1
    assert [b[-1] for b in page["items"][0]["student"]] == ["dog", "bird"]
    r = client.get(url, params={"sort": "name", "offset": 3, "limit": 5}, headers=alice)
    assert [it["file_name"] for it in r.json()["items"]] == ["img_009.jpg"]
    r = client.get(url, params={"min_score": 0.95}, headers=alice)
    assert all(it["student"] == [] for it in r.json()["items"])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("offset=-1", "offset"),
        ("sort=score", "sort"),
        ("min_score=1.5", "min_score"),
        ("min_score=nan", "min_score"),
        ("limit=abc", "limit"),
    ],
)
def test_predictions_bad_query_is_422_naming_it(
    client: TestClient, alice: Headers, distill_job: str, query: str, field: str
) -> None:
    r = client.get(f"/api/v1/jobs/{distill_job}/predictions?{query}", headers=alice)
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == f"query.{field}"


def test_predictions_of_another_users_job_is_404(
    client: TestClient, bob: Headers, distill_job: str
) -> None:
    assert client.get(f"/api/v1/jobs/{distill_job}/predictions", headers=bob).status_code == 404
    assert client.get("/api/v1/jobs/nope/predictions", headers=bob).status_code == 404


def test_predictions_without_artifacts_show_ground_truth_only(
    client: TestClient, alice: Headers, dataset_id: str
) -> None:
    job_id = _job(client, dataset_id, kind=JobKind.train, status=JobStatus.running)
    r = client.get(f"/api/v1/jobs/{job_id}/predictions", headers=alice)
    assert r.status_code == 200
    items = r.json()["items"]
    assert len(items) == 4 and all(it["student"] == it["teacher"] == [] for it in items)
    assert sum(len(it["gt"]) for it in items) == 9


# --- comparison and baseline -------------------------------------------------------------------


def test_comparison_without_baseline_reports_teacher_and_ap_retained(
    client: TestClient, alice: Headers, distill_job: str
) -> None:
    r = client.get(f"/api/v1/jobs/{distill_job}/comparison", headers=alice)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["student"] == {"job_id": distill_job, "metrics": METRICS, "params": 1000}
    assert doc["teacher"] == {"arch": ARCH, "metrics": TEACHER_METRICS, "params": 2000}
    assert doc["baseline"] is None
    assert doc["ap_retained"] == pytest.approx(0.75)


def test_comparison_picks_newest_matching_plain_training_job_as_baseline(
    client: TestClient, alice: Headers, dataset_id: str, distill_job: str
) -> None:
    old = _job(
        client,
        dataset_id,
        kind=JobKind.train,
        config=_config(teacher=False),
        result={"metrics": {"bbox": {**METRICS, "AP": 25.0}}, "params": {"student": 1000}},
    )
    r = client.get(f"/api/v1/jobs/{distill_job}/comparison", headers=alice)
    baseline = r.json()["baseline"]
    assert baseline["job_id"] == old and baseline["status"] == "succeeded"
    assert baseline["metrics"]["AP"] == 25.0 and baseline["params"] == 1000
    # Not baselines: another image size, a failed run, a distillation with terms.
    _job(client, dataset_id, kind=JobKind.train, config=_config(teacher=False, epochs=3))
    _job(client, dataset_id, kind=JobKind.train, status=JobStatus.failed)
    _job(client, dataset_id, teacher_id=_teacher_row(client))
    assert (
        client.get(f"/api/v1/jobs/{distill_job}/comparison", headers=alice).json()["baseline"][
            "job_id"
        ]
        == old
    )
    # A running distillation with preset "none" is one (newest first; metrics still null).
    running = _job(
        client,
        dataset_id,
        teacher_id=_teacher_row(client),
        config=_config(teacher=True, preset="none"),
        status=JobStatus.running,
    )
    baseline = client.get(f"/api/v1/jobs/{distill_job}/comparison", headers=alice).json()[
        "baseline"
    ]
    assert baseline == {"job_id": running, "status": "running", "metrics": None, "params": None}


def test_comparison_of_train_job_has_no_teacher(
    client: TestClient, alice: Headers, bob: Headers, dataset_id: str
) -> None:
    job_id = _job(client, dataset_id, kind=JobKind.train, status=JobStatus.queued)
    r = client.get(f"/api/v1/jobs/{job_id}/comparison", headers=alice)
    assert r.status_code == 200
    assert r.json() == {
        "student": {"job_id": job_id, "metrics": None, "params": None},
        "teacher": None,
        "baseline": None,
        "ap_retained": None,
    }
    assert client.get(f"/api/v1/jobs/{job_id}/comparison", headers=bob).status_code == 404


def test_post_baseline_creates_train_job_without_distill_and_enqueues_it(
    client: TestClient, alice: Headers, bob: Headers, queue: FakeQueue, distill_job: str
) -> None:
    assert client.post(f"/api/v1/jobs/{distill_job}/baseline", headers=bob).status_code == 404
    r = client.post(f"/api/v1/jobs/{distill_job}/baseline", headers=alice)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["kind"] == "train" and job["status"] == "queued" and job["teacher_id"] is None
    assert job["config"]["distill"] is None
    source = client.get(f"/api/v1/jobs/{distill_job}", headers=alice).json()["config"]
    assert {k: v for k, v in job["config"].items() if k != "distill"} == {
        k: v for k, v in source.items() if k != "distill"
    }
    assert queue.sent == [("train.run", job["id"], "cpu")]
    comparison = client.get(f"/api/v1/jobs/{distill_job}/comparison", headers=alice).json()
    assert comparison["baseline"]["job_id"] == job["id"]
    # A job without a teacher has no baseline to start.
    r = client.post(f"/api/v1/jobs/{job['id']}/baseline", headers=alice)
    assert r.status_code == 409


# --- preflight ---------------------------------------------------------------------------------


@pytest.fixture
def teacher_id(client: TestClient, alice: Headers, tmp_path: Path) -> str:
    from bmgkd_core.models import build_detector
    from bmgkd_core.train.checkpoint import save_model

    path = tmp_path / "model.pt"
    model = build_detector(ARCH, 4, image_size=64)
    save_model(path, model, arch=ARCH, num_classes=4, class_names=CLASSES, image_size=64)
    r = client.post(
        "/api/v1/teachers",
        headers=alice,
        files={"file": ("model.pt", path.read_bytes(), "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_preflight_real_teacher_returns_report_without_server_paths(
    client: TestClient, alice: Headers, settings: Settings, dataset_id: str, teacher_id: str
) -> None:
    config = {
        "model": {"arch": ARCH},
        "data": {"image_size": 64, "num_workers": 0},
        "train": {"batch_size": 1, "device": "cpu"},
    }
    r = client.post(
        "/api/v1/preflight",
        headers=alice,
        json={"dataset_id": dataset_id, "teacher_id": teacher_id, "config": config},
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["device"] == "cpu"
    assert report["classes"]["names"] == CLASSES and report["classes"]["match"]
    assert "AP" in report["teacher_metrics"]["bbox"]
    assert "loss" in report["first_step_losses"]
    assert report["step_time_s"] > 0 and report["total_steps"] == 6 * 12
    assert str(settings.data_dir) not in r.text


def test_preflight_bad_setup_is_422_before_spawning(
    client: TestClient,
    alice: Headers,
    bob: Headers,
    dataset_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_spawn(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("preflight must not spawn for a config it can reject")

    monkeypatch.setattr(subprocess, "run", no_spawn)
    teacher_id = _teacher_row(client)
    body = {"dataset_id": dataset_id, "teacher_id": teacher_id}
    r = client.post(
        "/api/v1/preflight",
        headers=alice,
        json={**body, "config": {"model": {"arch": "fasterrcnn_resnet18_fpn"}}},
    )
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == "teacher_id"
    assert "same detector family" in r.json()["detail"]["message"]
    bad_split = {"model": {"arch": ARCH}, "data": {"train_split": "val"}}
    r = client.post("/api/v1/preflight", headers=alice, json={**body, "config": bad_split})
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == "config.data.train_split"
    r = client.post("/api/v1/preflight", headers=bob, json={**body, "config": {}})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "dataset_id"
    r = client.post("/api/v1/preflight", headers=alice, json={**body, "nope": 1})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "nope"


def test_preflight_engine_error_maps_to_422_with_paths_scrubbed(
    client: TestClient,
    alice: Headers,
    settings: Settings,
    dataset_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _session(client) as session:
        root = settings.data_dir / session.get(Dataset, dataset_id).storage_path
    calls: list[list[str]] = []

    def fail(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        stderr = (
            "WARNING something\n"
            f"bmgkd preflight: error: {root.resolve()}/annotations/train.json: broken [json]\n"
        )
        return subprocess.CompletedProcess(cmd, 2, "", stderr)

    monkeypatch.setattr(subprocess, "run", fail)
    body = {"dataset_id": dataset_id, "teacher_id": _teacher_row(client), "config": {}}
    body["config"] = {"model": {"arch": ARCH}, "data": {"image_size": 64}}
    r = client.post("/api/v1/preflight", headers=alice, json=body)
    assert r.status_code == 422
    assert r.json()["detail"] == {
        "field": "preflight",
        "message": "preflight: annotations/train.json: broken [json]",
    }
    cmd = calls[0]
    assert cmd[cmd.index("--device") + 1] == "cpu" and "--json" in cmd
    assert cmd[cmd.index("--image-size") + 1] == "64"
    assert cmd[cmd.index("--data") + 1] == str(root.resolve())

    def crash(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nRuntimeError: boom\n")

    monkeypatch.setattr(subprocess, "run", crash)
    r = client.post("/api/v1/preflight", headers=alice, json=body)
    assert r.status_code == 502

    def slow(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", slow)
    r = client.post("/api/v1/preflight", headers=alice, json=body)
    assert r.status_code == 422 and "took longer than" in r.json()["detail"]["message"]


def test_predictions_of_voc_dataset_link_jpegimages(
    client: TestClient, alice: Headers, tiny_voc: Path
) -> None:
    from tests.api.conftest import zip_dir

    r = client.post(
        "/api/v1/datasets",
        headers=alice,
        files={"file": ("voc.zip", zip_dir(tiny_voc), "application/zip")},
    )
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "voc"
    dataset_id = r.json()["id"]
    job_id = _job(client, dataset_id, kind=JobKind.train)
    # VOC category ids are the labels 1..K
    _artifact(
        client.app.state.settings,  # type: ignore[attr-defined]
        client,
        job_id,
        "predictions_val.json",
        [{"image_id": 9, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.7}],
    )
    r = client.get(f"/api/v1/jobs/{job_id}/predictions?sort=name", headers=alice)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 4
    assert items[0]["url"].endswith("/images/JPEGImages/" + items[0]["file_name"])
    assert {b[-1] for it in items for b in it["gt"]} <= set(CLASSES)
    assert [it["student"] for it in items if it["image_id"] == 9] == [[[1, 2, 4, 6, 0.7, "cat"]]]
    assert client.get(items[0]["url"], headers=alice).status_code == 200
