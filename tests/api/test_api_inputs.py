"""HTTP behaviour on good and bad input: status codes, messages that name the field, file or
archive member at fault, ownership (404 for other users' ids), job state transitions, the queue
hand-off, and that a rejected upload keeps nothing (no row, no stored file, no staging leftovers).

Teacher uploads run the real checker (``inspect-teacher`` in a child process, a few seconds each);
the tests build the checkpoints with the engine (tests may import torch, the API may not).
"""

from __future__ import annotations

import io
import json
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import api.routes.teachers
from api.db.models import Artifact
from api.db.repo import JobRepo
from api.queue import FakeQueue
from api.settings import Settings
from tests.api.conftest import zip_dir

Headers = dict[str, str]

ARCH = "retinanet_resnet18_fpn"
TRAIN_CONFIG: dict[str, Any] = {"model": {"arch": ARCH}, "train": {"device": "cpu"}}
CLASS_NAMES = ["bird", "cat", "dog"]  # tiny_coco's classes
INT64_MAX = 2**63 - 1


# --- helpers -----------------------------------------------------------------------------------


def _upload_dataset(
    client: TestClient, headers: Headers, data: bytes, filename: str = "tiny.zip", **form: str
) -> Any:
    return client.post(
        "/api/v1/datasets",
        headers=headers,
        files={"file": (filename, data, "application/zip")},
        data=form,
    )


def _upload_teacher(
    client: TestClient, headers: Headers, data: bytes, filename: str = "teacher.pt", **form: str
) -> Any:
    return client.post(
        "/api/v1/teachers",
        headers=headers,
        files={"file": (filename, data, "application/octet-stream")},
        data=form,
    )


def _create_job(
    client: TestClient,
    headers: Headers,
    dataset_id: str,
    config: dict[str, Any] | None = None,
    **fields: Any,
) -> Any:
    body = {"kind": "train", "dataset_id": dataset_id, "config": config or TRAIN_CONFIG, **fields}
    return client.post("/api/v1/jobs", headers=headers, json=body)


def _job_id(client: TestClient, headers: Headers, dataset_id: str, **kwargs: Any) -> str:
    r = _create_job(client, headers, dataset_id, **kwargs)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _detail(r: Any) -> dict[str, Any]:
    detail = r.json()["detail"]
    assert isinstance(detail, dict), detail
    return detail


def _stored(client: TestClient, headers: Headers, settings: Settings) -> dict[str, Any]:
    """What the service keeps for a user: rows and files (to compare before/after a request)."""

    def names(d: Path) -> list[str]:
        return sorted(p.name for p in d.iterdir()) if d.exists() else []

    datasets = client.get("/api/v1/datasets", headers=headers)
    teachers = client.get("/api/v1/teachers", headers=headers)
    assert datasets.status_code == teachers.status_code == 200
    return {
        "dataset_rows": sorted(d["id"] for d in datasets.json()),
        "teacher_rows": sorted(t["id"] for t in teachers.json()),
        "dataset_files": names(settings.datasets_dir),
        "teacher_files": names(settings.teachers_dir),
        "tmp": names(settings.tmp_dir),
    }


def _assert_nothing_kept(
    client: TestClient, headers: Headers, settings: Settings, before: dict[str, Any]
) -> None:
    after = _stored(client, headers, settings)
    assert after == before
    assert after["tmp"] == []


def _zip_members(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _edit_train_json(root: Path, edit: Any) -> dict[str, Any]:
    path = root / "annotations" / "train.json"
    data: dict[str, Any] = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return data


def _claim(client: TestClient, job_id: str) -> None:
    """Make a queued job ``running`` the way a worker does."""
    with client.app.state.session_factory() as session:  # type: ignore[attr-defined]
        assert JobRepo(session).claim(job_id, worker="test-worker", stale_after_s=60) is not None


# --- authentication and health -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/datasets"), ("GET", "/api/v1/jobs"), ("POST", "/api/v1/jobs")],
)
@pytest.mark.parametrize("auth", [None, "Basic YWxpY2U6c2VjcmV0"], ids=["no-header", "not-bearer"])
def test_auth_missing_key_returns_401_naming_header(
    client: TestClient, method: str, path: str, auth: str | None
) -> None:
    headers = {"Authorization": auth} if auth else {}
    r = client.request(method, path, headers=headers, json={})
    assert r.status_code == 401
    assert "Authorization: Bearer" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_auth_wrong_key_returns_401_invalid_key(client: TestClient, alice: Headers) -> None:
    r = client.get("/api/v1/datasets", headers={"Authorization": "Bearer not-a-real-key"})
    assert r.status_code == 401
    assert "invalid or revoked API key" in r.json()["detail"]


def test_healthz_without_auth_returns_200(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_db_and_broker_up_returns_200(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_readyz_broker_down_returns_503_naming_broker(client: TestClient, queue: FakeQueue) -> None:
    queue.fail = True
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["broker"].startswith("error")
    assert r.json()["database"] == "ok"


# --- dataset uploads: rejected -----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["random-after-header", "truncated"])
def test_dataset_upload_corrupt_zip_returns_422_naming_archive(
    client: TestClient,
    alice: Headers,
    settings: Settings,
    dataset_zip: bytes,
    damage: str,
) -> None:
    if damage == "truncated":
        data = dataset_zip[: len(dataset_zip) // 2]
    else:
        data = b"PK\x03\x04" + random.Random(0).randbytes(4096)
    before = _stored(client, alice, settings)
    r = _upload_dataset(client, alice, data)
    assert r.status_code == 422
    detail = _detail(r)
    assert detail["field"] == "file"
    assert "archive" in detail["message"]
    _assert_nothing_kept(client, alice, settings, before)


def test_dataset_upload_member_escaping_root_returns_422_naming_member(
    client: TestClient, alice: Headers, settings: Settings, tiny_coco: Path
) -> None:
    members = {
        "annotations/train.json": (tiny_coco / "annotations" / "train.json").read_bytes(),
        "../evil.txt": b"outside",
    }
    before = _stored(client, alice, settings)
    r = _upload_dataset(client, alice, _zip_members(members))
    assert r.status_code == 422
    detail = _detail(r)
    assert detail["field"] == "file"
    assert detail["member"] == "../evil.txt"
    assert "'../evil.txt'" in detail["message"]
    _assert_nothing_kept(client, alice, settings, before)
    assert not (settings.data_dir / "evil.txt").exists()
    assert not (settings.tmp_dir.parent / "evil.txt").exists()


def test_dataset_upload_empty_file_returns_422_field_file(
    client: TestClient, alice: Headers, settings: Settings
) -> None:
    before = _stored(client, alice, settings)
    r = _upload_dataset(client, alice, b"")
    assert r.status_code == 422
    assert _detail(r)["field"] == "file"
    assert "empty" in _detail(r)["message"]
    _assert_nothing_kept(client, alice, settings, before)


def test_dataset_upload_box_out_of_bounds_returns_422_naming_file_and_record(
    client: TestClient, alice: Headers, settings: Settings, tiny_coco_copy: Path
) -> None:
    data = _edit_train_json(
        tiny_coco_copy, lambda d: d["annotations"][0].__setitem__("bbox", [5000, 5000, 10, 10])
    )
    ann_id = data["annotations"][0]["id"]
    before = _stored(client, alice, settings)
    r = _upload_dataset(client, alice, zip_dir(tiny_coco_copy, prefix="tiny/"))
    assert r.status_code == 422
    detail = _detail(r)
    assert detail["field"] == "file"
    assert detail["num_errors"] >= 1
    out_of_bounds = [i for i in detail["issues"] if i["code"] == "box-out-of-bounds"]
    assert len(out_of_bounds) == 1
    issue = out_of_bounds[0]
    assert issue["severity"] == "error"
    assert issue["file"] == "annotations/train.json"
    assert "annotations[0]" in issue["record"]
    assert f"id={ann_id}" in issue["record"]
    assert "annotations/train.json" in detail["message"]
    _assert_nothing_kept(client, alice, settings, before)


@pytest.mark.parametrize(
    ("form", "field"),
    [({"format": "yolo"}, "format"), ({"name": "n" * 201}, "name")],
    ids=["format", "name"],
)
def test_dataset_upload_bad_form_field_returns_422_naming_field(
    client: TestClient,
    alice: Headers,
    settings: Settings,
    dataset_zip: bytes,
    form: dict[str, str],
    field: str,
) -> None:
    before = _stored(client, alice, settings)
    r = _upload_dataset(client, alice, dataset_zip, **form)
    assert r.status_code == 422
    assert _detail(r)["field"] == field
    assert _detail(r)["message"].startswith(f"{field}:")
    _assert_nothing_kept(client, alice, settings, before)


def test_dataset_upload_bbox_int_beyond_float_returns_422_naming_record(
    client: TestClient, alice: Headers, settings: Settings, tiny_coco_copy: Path
) -> None:
    _edit_train_json(
        tiny_coco_copy, lambda d: d["annotations"][0].__setitem__("bbox", [10**400, 1, 3, 4])
    )
    before = _stored(client, alice, settings)
    r = _upload_dataset(client, alice, zip_dir(tiny_coco_copy))
    assert r.status_code == 422
    issues = _detail(r)["issues"]
    assert issues[0]["file"] == "annotations/train.json"
    assert "annotations[0]" in issues[0]["record"]
    _assert_nothing_kept(client, alice, settings, before)


def test_dataset_upload_absolute_image_path_returns_422_naming_record(
    client: TestClient, alice: Headers, settings: Settings, tiny_coco_copy: Path
) -> None:
    _edit_train_json(
        tiny_coco_copy, lambda d: d["images"][0].__setitem__("file_name", "/etc/hostname")
    )
    before = _stored(client, alice, settings)
    r = _upload_dataset(client, alice, zip_dir(tiny_coco_copy))
    assert r.status_code == 422
    issues = _detail(r)["issues"]
    assert issues[0]["file"] == "annotations/train.json"
    assert "images[0]" in issues[0]["record"]
    _assert_nothing_kept(client, alice, settings, before)


def test_dataset_upload_image_path_outside_archive_returns_422_naming_record(
    client: TestClient, alice: Headers, settings: Settings, tiny_coco_copy: Path
) -> None:
    # The upload is unpacked into data_dir/tmp/upload-*/x/; from its images/ folder five '..'
    # reach data_dir's parent, where a valid image of the declared size is waiting.
    shutil.copyfile(tiny_coco_copy / "images" / "img_000.jpg", settings.data_dir.parent / "o.jpg")
    _edit_train_json(
        tiny_coco_copy, lambda d: d["images"][0].__setitem__("file_name", "../" * 5 + "o.jpg")
    )
    before = _stored(client, alice, settings)
    r = _upload_dataset(client, alice, zip_dir(tiny_coco_copy))
    assert r.status_code == 422
    issues = _detail(r)["issues"]
    assert issues[0]["file"] == "annotations/train.json"
    assert "images[0]" in issues[0]["record"]
    _assert_nothing_kept(client, alice, settings, before)


def test_dataset_upload_deeply_nested_json_returns_422_naming_file(
    client: TestClient, alice: Headers, settings: Settings, tiny_coco_copy: Path
) -> None:
    (tiny_coco_copy / "annotations" / "train.json").write_text("[" * 100_000 + "]" * 100_000)
    before = _stored(client, alice, settings)
    r = _upload_dataset(client, alice, zip_dir(tiny_coco_copy))
    assert r.status_code == 422
    issues = _detail(r)["issues"]
    assert issues[0]["file"] == "annotations/train.json"
    _assert_nothing_kept(client, alice, settings, before)


def test_dataset_upload_unknown_layout_returns_422_without_server_paths(
    client: TestClient, alice: Headers, settings: Settings
) -> None:
    before = _stored(client, alice, settings)
    r = _upload_dataset(client, alice, _zip_members({"readme.txt": b"hello"}))
    assert r.status_code == 422
    detail = _detail(r)
    assert detail["field"] == "file"
    assert str(settings.data_dir) not in json.dumps(detail)
    _assert_nothing_kept(client, alice, settings, before)


# --- dataset uploads: accepted -----------------------------------------------------------------


def test_dataset_upload_same_content_twice_returns_200_same_id(
    client: TestClient, alice: Headers, settings: Settings, dataset_zip: bytes
) -> None:
    first = _upload_dataset(client, alice, dataset_zip)
    assert first.status_code == 201, first.text
    second = _upload_dataset(client, alice, dataset_zip, name="again")
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]
    stored = _stored(client, alice, settings)
    assert stored["dataset_rows"] == [first.json()["id"]]
    assert stored["dataset_files"] == [first.json()["content_hash"]]
    assert stored["tmp"] == []


def test_dataset_read_own_returns_counts_and_class_counts(
    client: TestClient, alice: Headers, dataset_id: str, tiny_coco: Path
) -> None:
    splits = {
        s: json.loads((tiny_coco / "annotations" / f"{s}.json").read_text())
        for s in ("train", "val")
    }
    names = {c["id"]: c["name"] for c in splits["train"]["categories"]}
    r = client.get(f"/api/v1/datasets/{dataset_id}", headers=alice)
    assert r.status_code == 200
    body = r.json()
    assert body["format"] == "coco"
    assert body["class_names"] == CLASS_NAMES
    assert body["num_images"] == sum(len(d["images"]) for d in splits.values())
    non_crowd = {s: [a for a in d["annotations"] if not a["iscrowd"]] for s, d in splits.items()}
    assert body["num_boxes"] == sum(len(a) for a in non_crowd.values())
    for split, anns in non_crowd.items():
        expected = dict.fromkeys(CLASS_NAMES, 0)
        for a in anns:
            expected[names[a["category_id"]]] += 1
        assert body["stats"]["class_counts"][split] == expected
        assert body["stats"]["splits"][split]["images"] == len(splits[split]["images"])
        assert body["stats"]["splits"][split]["boxes"] == len(anns)
    assert "root" not in body["stats"]


def test_dataset_delete_unused_returns_204_and_removes_files(
    client: TestClient, alice: Headers, settings: Settings, dataset_id: str
) -> None:
    r = client.delete(f"/api/v1/datasets/{dataset_id}", headers=alice)
    assert r.status_code == 204
    assert client.get(f"/api/v1/datasets/{dataset_id}", headers=alice).status_code == 404
    assert _stored(client, alice, settings)["dataset_files"] == []


def test_dataset_delete_in_use_returns_409_naming_jobs(
    client: TestClient, alice: Headers, settings: Settings, dataset_id: str
) -> None:
    _job_id(client, alice, dataset_id)
    before = _stored(client, alice, settings)
    r = client.delete(f"/api/v1/datasets/{dataset_id}", headers=alice)
    assert r.status_code == 409
    assert dataset_id in r.json()["detail"]
    assert "1 job(s)" in r.json()["detail"]
    assert _stored(client, alice, settings) == before


# --- ownership ---------------------------------------------------------------------------------


@pytest.fixture
def alice_job(client: TestClient, alice: Headers, dataset_id: str, settings: Settings) -> str:
    """A queued job of alice's with one artifact on disk (``metrics.json``)."""
    job_id = _job_id(client, alice, dataset_id)
    rel = f"runs/{job_id}/metrics.json"
    (settings.data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / rel).write_text('{"map": 0.5}')
    with client.app.state.session_factory() as session:  # type: ignore[attr-defined]
        session.add(
            Artifact(job_id=job_id, name="metrics.json", path=rel, size_bytes=12, sha256="0" * 64)
        )
        session.commit()
    return job_id


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/datasets/{dataset}"),
        ("DELETE", "/api/v1/datasets/{dataset}"),
        ("GET", "/api/v1/jobs/{job}"),
        ("DELETE", "/api/v1/jobs/{job}"),
        ("POST", "/api/v1/jobs/{job}/cancel"),
        ("POST", "/api/v1/jobs/{job}/resume"),
        ("GET", "/api/v1/jobs/{job}/metrics"),
        ("GET", "/api/v1/jobs/{job}/logs"),
        ("GET", "/api/v1/jobs/{job}/events"),
        ("GET", "/api/v1/jobs/{job}/artifacts"),
        ("GET", "/api/v1/jobs/{job}/artifacts/metrics.json"),
    ],
)
def test_ownership_other_users_id_returns_404_naming_id(
    client: TestClient,
    alice: Headers,
    bob: Headers,
    dataset_id: str,
    alice_job: str,
    queue: FakeQueue,
    method: str,
    path: str,
) -> None:
    url = path.format(dataset=dataset_id, job=alice_job)
    sent = list(queue.sent)
    r = client.request(method, url, headers=bob)
    assert r.status_code == 404
    assert (dataset_id if "{dataset}" in path else alice_job) in r.json()["detail"]
    # Nothing happened to alice's objects.
    assert queue.sent == sent
    job = client.get(f"/api/v1/jobs/{alice_job}", headers=alice)
    assert job.status_code == 200
    assert job.json()["status"] == "queued"
    assert client.get(f"/api/v1/datasets/{dataset_id}", headers=alice).status_code == 200
    download = client.get(f"/api/v1/jobs/{alice_job}/artifacts/metrics.json", headers=alice)
    assert download.status_code == 200
    assert download.json() == {"map": 0.5}


def test_ownership_unknown_ids_return_404_naming_id(client: TestClient, alice: Headers) -> None:
    for url in ("/api/v1/datasets/nope", "/api/v1/teachers/nope", "/api/v1/jobs/nope"):
        r = client.get(url, headers=alice)
        assert r.status_code == 404
        assert "'nope'" in r.json()["detail"]


def test_artifact_unknown_name_returns_404_naming_name(
    client: TestClient, alice: Headers, alice_job: str
) -> None:
    r = client.get(f"/api/v1/jobs/{alice_job}/artifacts/model.pt", headers=alice)
    assert r.status_code == 404
    assert "'model.pt'" in r.json()["detail"]


# --- job submission: rejected ------------------------------------------------------------------


def test_job_create_other_users_dataset_returns_422_naming_dataset_id(
    client: TestClient, alice: Headers, bob: Headers, dataset_zip: bytes, queue: FakeQueue
) -> None:
    r = _upload_dataset(client, bob, dataset_zip)
    assert r.status_code == 201
    bobs = r.json()["id"]
    r = _create_job(client, alice, bobs)
    assert r.status_code == 422
    assert _detail(r)["field"] == "dataset_id"
    assert bobs in _detail(r)["message"]
    assert queue.sent == []
    assert client.get("/api/v1/jobs", headers=alice).json()["total"] == 0


@pytest.mark.parametrize(
    ("config", "field", "mentions"),
    [
        ({"model": {"arch": "yolo_v8"}}, "config.model.arch", "yolo_v8"),
        ({"model": {"arch": ARCH}, "train": {"epoch": 3}}, "config.train.epoch", "Extra inputs"),
        ({"model": {"arch": ARCH}, "data": {"root": "/etc"}}, "config.data.root", "dataset_id"),
        ({"model": {"arch": ARCH}, "data": "x"}, "config.data", "object"),
        ({"model": {"arch": ARCH}, "optim": {"lr": -1}}, "config.optim.lr", "greater"),
        (
            {"model": {"arch": ARCH}, "data": {"val_split": "test"}},
            "config.data.val_split",
            "'test'",
        ),
        ({"model": {"arch": ARCH}, "distill": {}}, "config.distill", "distill"),
    ],
    ids=["arch", "unknown-key", "data-root", "data-type", "lr", "split", "distill-section"],
)
def test_job_create_bad_config_returns_422_naming_field(
    client: TestClient,
    alice: Headers,
    dataset_id: str,
    queue: FakeQueue,
    config: dict[str, Any],
    field: str,
    mentions: str,
) -> None:
    r = _create_job(client, alice, dataset_id, config=config)
    assert r.status_code == 422, r.text
    detail = _detail(r)
    assert detail["field"] == field
    assert detail["message"].startswith(f"{field}: ")
    assert mentions in detail["message"]
    assert queue.sent == []
    assert client.get("/api/v1/jobs", headers=alice).json()["total"] == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "distill"}, "teacher_id"),
        ({"kind": "train", "teacher_id": "nope"}, "teacher_id"),
        ({"kind": "eval"}, "source_job_id"),
        ({"kind": "fit"}, "kind"),
        ({"kind": "train", "colour": "red"}, "colour"),
    ],
    ids=["distill-no-teacher", "unknown-teacher", "eval-no-source", "bad-kind", "extra-field"],
)
def test_job_create_bad_request_fields_returns_422_naming_field(
    client: TestClient,
    alice: Headers,
    dataset_id: str,
    queue: FakeQueue,
    fields: dict[str, Any],
    field: str,
) -> None:
    r = _create_job(client, alice, dataset_id, **fields)
    assert r.status_code == 422, r.text
    assert _detail(r)["field"] == field
    assert _detail(r)["message"].startswith(f"{field}: ")
    assert queue.sent == []


def test_job_create_train_with_source_job_id_returns_422_naming_source_job_id(
    client: TestClient, alice: Headers, dataset_id: str, queue: FakeQueue
) -> None:
    source = _job_id(client, alice, dataset_id)
    r = _create_job(client, alice, dataset_id, source_job_id=source)
    assert r.status_code == 422, r.text
    assert _detail(r)["field"] == "source_job_id"
    assert len(queue.sent) == 1


def test_job_create_eval_of_unfinished_job_returns_422_naming_source_job_id(
    client: TestClient, alice: Headers, dataset_id: str
) -> None:
    source = _job_id(client, alice, dataset_id)
    r = _create_job(client, alice, dataset_id, config={}, kind="eval", source_job_id=source)
    assert r.status_code == 422
    assert _detail(r)["field"] == "source_job_id"
    assert source in _detail(r)["message"]


# --- job submission: accepted ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "queue_name"), [("cpu", "cpu"), ("auto", "gpu"), ("cuda", "gpu")]
)
def test_job_create_valid_returns_201_and_enqueues_by_device(
    client: TestClient,
    alice: Headers,
    dataset_id: str,
    queue: FakeQueue,
    device: str,
    queue_name: str,
) -> None:
    r = _create_job(
        client, alice, dataset_id, config={"model": {"arch": ARCH}, "train": {"device": device}}
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued"
    assert job["queue"] == queue_name
    assert job["config"]["data"]["root"] == "<dataset>"
    assert job["config"]["train"]["device"] == device
    assert queue.sent == [("train.run", job["id"], queue_name)]


def test_job_create_broker_down_returns_201_and_stays_queued(
    client: TestClient, alice: Headers, dataset_id: str, queue: FakeQueue
) -> None:
    queue.fail = True
    r = _create_job(client, alice, dataset_id)
    assert r.status_code == 201, r.text
    assert queue.sent == []
    job = client.get(f"/api/v1/jobs/{r.json()['id']}", headers=alice)
    assert job.status_code == 200
    assert job.json()["status"] == "queued"


def test_job_list_status_filter_paginates_newest_first(
    client: TestClient, alice: Headers, dataset_id: str
) -> None:
    ids = [_job_id(client, alice, dataset_id) for _ in range(3)]
    cancelled = _job_id(client, alice, dataset_id)
    assert client.post(f"/api/v1/jobs/{cancelled}/cancel", headers=alice).status_code == 202
    first = client.get("/api/v1/jobs", headers=alice, params={"status": "queued", "limit": 2})
    assert first.status_code == 200
    assert first.json()["total"] == 3
    assert first.json()["limit"] == 2
    assert len(first.json()["items"]) == 2
    rest = client.get(
        "/api/v1/jobs", headers=alice, params={"status": "queued", "limit": 2, "offset": 2}
    )
    assert rest.status_code == 200
    assert rest.json()["total"] == 3
    assert len(rest.json()["items"]) == 1
    listed = [j["id"] for j in first.json()["items"] + rest.json()["items"]]
    assert sorted(listed) == sorted(ids)
    assert all(j["status"] == "queued" for j in first.json()["items"] + rest.json()["items"])


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "limit"), ({"offset": -1}, "offset"), ({"status": "done"}, "status")],
)
def test_job_list_bad_query_returns_422_naming_param(
    client: TestClient, alice: Headers, params: dict[str, Any], field: str
) -> None:
    r = client.get("/api/v1/jobs", headers=alice, params=params)
    assert r.status_code == 422
    assert _detail(r)["field"] == f"query.{field}"
    assert field in _detail(r)["message"]


# --- job state transitions ---------------------------------------------------------------------


def test_job_cancel_queued_returns_202_then_409(
    client: TestClient, alice: Headers, dataset_id: str
) -> None:
    job_id = _job_id(client, alice, dataset_id)
    r = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=alice)
    assert r.status_code == 202
    assert r.json()["status"] == "cancelled"
    again = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=alice)
    assert again.status_code == 409
    assert job_id in again.json()["detail"]
    assert "cancelled" in again.json()["detail"]


def test_job_cancel_running_returns_202_with_cancel_requested(
    client: TestClient, alice: Headers, dataset_id: str
) -> None:
    job_id = _job_id(client, alice, dataset_id)
    _claim(client, job_id)
    r = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=alice)
    assert r.status_code == 202
    assert r.json()["status"] == "running"
    assert r.json()["cancel_requested"] is True


def test_job_resume_cancelled_returns_202_queued_and_resends(
    client: TestClient, alice: Headers, dataset_id: str, queue: FakeQueue
) -> None:
    job_id = _job_id(client, alice, dataset_id)
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=alice).status_code == 202
    r = client.post(f"/api/v1/jobs/{job_id}/resume", headers=alice)
    assert r.status_code == 202
    assert r.json()["status"] == "queued"
    assert r.json()["cancel_requested"] is False
    assert queue.sent == [("train.run", job_id, "cpu"), ("train.run", job_id, "cpu")]


def test_job_resume_queued_returns_409_naming_status(
    client: TestClient, alice: Headers, dataset_id: str, queue: FakeQueue
) -> None:
    job_id = _job_id(client, alice, dataset_id)
    r = client.post(f"/api/v1/jobs/{job_id}/resume", headers=alice)
    assert r.status_code == 409
    assert "queued" in r.json()["detail"]
    assert len(queue.sent) == 1


def test_job_delete_running_returns_409_naming_status(
    client: TestClient, alice: Headers, dataset_id: str
) -> None:
    job_id = _job_id(client, alice, dataset_id)
    _claim(client, job_id)
    r = client.delete(f"/api/v1/jobs/{job_id}", headers=alice)
    assert r.status_code == 409
    assert "running" in r.json()["detail"]
    assert client.get(f"/api/v1/jobs/{job_id}", headers=alice).json()["status"] == "running"


def test_job_delete_cancelled_returns_204_and_removes_run_folder(
    client: TestClient, alice: Headers, dataset_id: str, settings: Settings
) -> None:
    job_id = _job_id(client, alice, dataset_id)
    (settings.runs_dir / job_id).mkdir(parents=True)
    (settings.runs_dir / job_id / "resume.pt").write_bytes(b"x")
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=alice).status_code == 202
    r = client.delete(f"/api/v1/jobs/{job_id}", headers=alice)
    assert r.status_code == 204
    assert client.get(f"/api/v1/jobs/{job_id}", headers=alice).status_code == 404
    assert not (settings.runs_dir / job_id).exists()


@pytest.mark.parametrize("endpoint", ["metrics", "logs"])
def test_job_data_after_id_beyond_int64_returns_422_naming_after_id(
    client: TestClient, alice: Headers, alice_job: str, endpoint: str
) -> None:
    r = client.get(
        f"/api/v1/jobs/{alice_job}/{endpoint}", headers=alice, params={"after_id": 2**64}
    )
    assert r.status_code == 422
    assert _detail(r)["field"] == "query.after_id"


def test_job_events_last_event_id_beyond_int64_streams_to_end(
    client: TestClient, alice: Headers, alice_job: str
) -> None:
    assert client.post(f"/api/v1/jobs/{alice_job}/cancel", headers=alice).status_code == 202
    headers = {**alice, "Last-Event-ID": str(2**64)}
    r = client.get(f"/api/v1/jobs/{alice_job}/events", headers=headers)
    assert r.status_code == 200
    assert "event: end" in r.text


def test_job_events_terminal_job_streams_status_and_end(
    client: TestClient, alice: Headers, alice_job: str
) -> None:
    assert client.post(f"/api/v1/jobs/{alice_job}/cancel", headers=alice).status_code == 202
    r = client.get(f"/api/v1/jobs/{alice_job}/events", headers=alice)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "event: status" in r.text
    assert 'event: end\ndata: {"status":"cancelled"}' in r.text


# --- metrics -----------------------------------------------------------------------------------


def test_metrics_after_job_create_counts_queued_job(
    client: TestClient, alice: Headers, dataset_id: str
) -> None:
    _job_id(client, alice, dataset_id)
    r = client.get("/metrics")
    assert r.status_code == 200
    assert 'bmgkd_jobs{status="queued"} 1.0' in r.text
    assert 'bmgkd_jobs{status="running"} 0.0' in r.text
    assert 'bmgkd_queue_depth{queue="cpu"} 1.0' in r.text


# --- teachers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, list[str]]:
    """A real ``model.pt`` (retinanet, tiny_coco's classes), a plain state dict of the same model
    with three keys dropped, and the dropped keys."""
    import torch

    from bmgkd_core.models import build_detector
    from bmgkd_core.train.checkpoint import save_model

    torch.manual_seed(0)
    model = build_detector(ARCH, len(CLASS_NAMES) + 1, image_size=64)
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    save_model(
        path,
        model,
        arch=ARCH,
        num_classes=len(CLASS_NAMES) + 1,
        class_names=CLASS_NAMES,
        image_size=64,
    )
    state = model.state_dict()
    dropped = [k for k in state if k.startswith("head.classification_head.")][:3]
    assert len(dropped) == 3
    buf = io.BytesIO()
    torch.save({k: v for k, v in state.items() if k not in dropped}, buf)
    return path.read_bytes(), buf.getvalue(), dropped


@pytest.fixture
def teacher_id(
    client: TestClient, alice: Headers, teacher_model: tuple[bytes, bytes, list[str]]
) -> str:
    r = _upload_teacher(client, alice, teacher_model[0], filename="model.pt")
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_teacher_upload_model_file_returns_201_with_load_report(
    client: TestClient, alice: Headers, settings: Settings, teacher_id: str
) -> None:
    r = client.get(f"/api/v1/teachers/{teacher_id}", headers=alice)
    assert r.status_code == 200
    teacher = r.json()
    assert teacher["arch"] == ARCH
    assert teacher["class_names"] == CLASS_NAMES
    report = teacher["load_report"]
    assert report["kind"] == "model_file"
    assert report["matched"] > 0
    assert report["missing"]["count"] == 0
    assert report["unexpected"]["count"] == 0
    assert report["shape_mismatched"]["count"] == 0
    assert report["path"] == "model.pt"
    stored = _stored(client, alice, settings)
    assert stored["teacher_files"] == [f"{teacher['sha256']}.pt"]
    assert stored["tmp"] == []


def test_teacher_upload_state_dict_missing_keys_returns_422_naming_key(
    client: TestClient,
    alice: Headers,
    settings: Settings,
    teacher_model: tuple[bytes, bytes, list[str]],
) -> None:
    _, state_dict, dropped = teacher_model
    before = _stored(client, alice, settings)
    r = _upload_teacher(
        client, alice, state_dict, filename="sd.pt", arch=ARCH, class_names="bird,cat,dog"
    )
    assert r.status_code == 422
    detail = _detail(r)
    assert detail["field"] == "file"
    assert "3 missing" in detail["message"]
    assert dropped[0] in detail["message"]
    assert str(settings.data_dir) not in detail["message"]
    _assert_nothing_kept(client, alice, settings, before)


def test_teacher_upload_not_a_checkpoint_returns_422_field_file(
    client: TestClient, alice: Headers, settings: Settings
) -> None:
    before = _stored(client, alice, settings)
    r = _upload_teacher(client, alice, b"hello", filename="hello.pt")
    assert r.status_code == 422
    detail = _detail(r)
    assert detail["field"] == "file"
    assert "hello.pt" in detail["message"]
    assert "checkpoint" in detail["message"]
    _assert_nothing_kept(client, alice, settings, before)


@pytest.mark.parametrize(
    ("form", "field", "mentions"),
    [
        ({"arch": "resnet_9000"}, "arch", "resnet_9000"),
        ({"class_names": "[1, 2]"}, "class_names", "JSON list"),
        ({"class_names": "bird,,dog"}, "class_names", "empty name"),
        ({"class_names": "bird,bird"}, "class_names", "unique"),
    ],
    ids=["arch", "json-not-strings", "empty-name", "duplicate"],
)
def test_teacher_upload_bad_form_field_returns_422_without_subprocess(
    client: TestClient,
    alice: Headers,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    form: dict[str, str],
    field: str,
    mentions: str,
) -> None:
    def no_check(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the checker (a child process) must not run for a bad form field")

    monkeypatch.setattr(api.routes.teachers, "check_teacher_file", no_check)
    before = _stored(client, alice, settings)
    r = _upload_teacher(client, alice, b"not read", **form)
    assert r.status_code == 422
    detail = _detail(r)
    assert detail["field"] == field
    assert detail["message"].startswith(f"{field}: ")
    assert mentions in detail["message"]
    _assert_nothing_kept(client, alice, settings, before)


def test_job_create_distill_other_family_returns_422_naming_teacher_id(
    client: TestClient, alice: Headers, dataset_id: str, teacher_id: str, queue: FakeQueue
) -> None:
    config = {"model": {"arch": "gfl_resnet18_fpn"}, "train": {"device": "cpu"}}
    r = _create_job(client, alice, dataset_id, config=config, kind="distill", teacher_id=teacher_id)
    assert r.status_code == 422
    detail = _detail(r)
    assert detail["field"] == "teacher_id"
    assert "family" in detail["message"]
    assert ARCH in detail["message"]
    assert "gfl_resnet18_fpn" in detail["message"]
    assert queue.sent == []


def test_job_create_distill_same_family_returns_201_distill_task(
    client: TestClient, alice: Headers, dataset_id: str, teacher_id: str, queue: FakeQueue
) -> None:
    r = _create_job(client, alice, dataset_id, kind="distill", teacher_id=teacher_id)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["kind"] == "distill"
    assert job["teacher_id"] == teacher_id
    assert job["config"]["distill"]["teacher"] == "<teacher>"
    assert job["config"]["distill"]["teacher_arch"] == ARCH
    assert queue.sent == [("distill.run", job["id"], "cpu")]
    # The teacher is now in use.
    r = client.delete(f"/api/v1/teachers/{teacher_id}", headers=alice)
    assert r.status_code == 409
    assert teacher_id in r.json()["detail"]
