"""Property-based run over the OpenAPI spec (schemathesis 4): whatever the input, never a 5xx.

Every operation of ``/openapi.json`` is its own test (valid and invalid inputs, deterministic:
``derandomize=True``), sent with alice's key to a fresh app on a private SQLite database (the
``client`` fixture; the spec itself is read once from a throw-away app at import). A request
with path parameters is sent again with the ids of real objects of alice's (a dataset, a teacher
row, a queued, a cancelled and a succeeded job, the last two with an artifact), and a generated
``POST /jobs`` body again with real ``dataset_id``/``teacher_id``/``source_job_id`` (and a model
section), so that the code behind the 404/422 runs too; :class:`World` re-creates those objects
before each example when an earlier request deleted them or changed their state. Left out: the
SSE stream ``/jobs/{job_id}/events`` (it streams until the job ends). The two
multipart uploads run in their own test with few examples; the teacher checker (a child process
importing torch, seconds per call) is replaced by a stub that rejects every file, so that test
fuzzes the form handling, the size/empty checks and the staging clean-up, not the checkpoint
loader (``test_api_inputs.py`` covers that with real files).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck

import api.routes.teachers
from api.db.models import Artifact, Dataset, Job, JobStatus, Teacher
from api.db.repo import JobRepo
from api.main import create_app
from api.queue import FakeQueue
from api.settings import Settings
from api.teacher_check import TeacherCheckError

Headers = dict[str, str]

EVENTS = "/api/v1/jobs/{job_id}/events"
UPLOADS = ["/api/v1/datasets", "/api/v1/teachers"]
ARCH = "retinanet_resnet18_fpn"
ARTIFACT = "metrics.json"
TRAIN_CONFIG = {"model": {"arch": ARCH}, "train": {"device": "cpu"}}
JOB_STATES = (JobStatus.queued, JobStatus.cancelled, JobStatus.succeeded)

_FUZZ = hypothesis.settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


def _load_spec() -> dict[str, Any]:
    """The OpenAPI document of an app that is thrown away (requests go to the test's own app)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), broker_url="memory://", _env_file=None)
        return create_app(settings, queue=FakeQueue()).openapi()


schema = schemathesis.openapi.from_dict(_load_spec())


class World:
    """Alice's objects that fuzzed requests with real ids hit: a dataset, a teacher row (with a
    stand-in file), and one job per state (queued, cancelled with an artifact, succeeded).
    :meth:`ensure` re-creates whatever a request deleted or moved out of its state."""

    def __init__(
        self, client: TestClient, headers: Headers, settings: Settings, dataset_zip: bytes
    ) -> None:
        self.client = client
        self.headers = headers
        self.settings = settings
        self.dataset_zip = dataset_zip
        self.factory = client.app.state.session_factory  # type: ignore[attr-defined]
        self.dataset = ""
        self.teacher = ""
        self.jobs: dict[JobStatus, str] = dict.fromkeys(JOB_STATES, "")
        self.ensure()

    def ensure(self) -> None:
        with self.factory() as session:
            have_dataset = bool(self.dataset) and session.get(Dataset, self.dataset) is not None
            have_teacher = bool(self.teacher) and session.get(Teacher, self.teacher) is not None
            jobs = {state: session.get(Job, job_id) for state, job_id in self.jobs.items()}
        if not have_dataset:
            self.dataset = self._upload_dataset()
        if not have_teacher:
            self.teacher = self._insert_teacher()
        for state, job in jobs.items():
            if job is None or job.status != state:
                self.jobs[state] = self._create_job(state)

    def real_path(self, generated: dict[str, Any]) -> dict[str, Any]:
        """Path parameters with every id replaced by a real one (``name`` is kept)."""
        ids = dict(generated)
        if "dataset_id" in ids:
            ids["dataset_id"] = self.dataset
        if "teacher_id" in ids:
            ids["teacher_id"] = self.teacher
        if "job_id" in ids:  # which job state: picked deterministically from the generated id
            ids["job_id"] = self.jobs[JOB_STATES[len(str(generated["job_id"])) % len(JOB_STATES)]]
        return ids

    def real_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """A ``JobCreate`` body with real ids, and a model section when the config lacks one."""
        out = {**body, "dataset_id": self.dataset}
        if "teacher_id" in out:
            out["teacher_id"] = self.teacher
        if "source_job_id" in out:
            out["source_job_id"] = self.jobs[JobStatus.succeeded]
        if isinstance(out.get("config"), dict) and out.get("kind") != "eval":
            out["config"] = {"model": {"arch": ARCH}, **out["config"]}
        return out

    def _upload_dataset(self) -> str:
        r = self.client.post(
            "/api/v1/datasets",
            headers=self.headers,
            files={"file": ("tiny.zip", self.dataset_zip, "application/zip")},
        )
        assert r.status_code in (200, 201), r.text
        return str(r.json()["id"])

    def _insert_teacher(self) -> str:
        data = b"stand-in teacher file"
        digest = hashlib.sha256(data).hexdigest()
        storage = f"teachers/{digest}.pt"
        (self.settings.data_dir / storage).write_bytes(data)
        with self.factory() as session:
            dataset = session.get(Dataset, self.dataset)
            assert dataset is not None
            user_id = dataset.user_id
            teacher = Teacher(
                user_id=user_id,
                name="teacher.pt",
                arch=ARCH,
                class_names=["bird", "cat", "dog"],
                sha256=digest,
                storage_path=storage,
                size_bytes=len(data),
                load_report={"matched": 1},
            )
            session.add(teacher)
            session.commit()
            return str(teacher.id)

    def _create_job(self, state: JobStatus) -> str:
        body = {"kind": "train", "dataset_id": self.dataset, "config": TRAIN_CONFIG}
        r = self.client.post("/api/v1/jobs", headers=self.headers, json=body)
        assert r.status_code == 201, r.text
        job_id = str(r.json()["id"])
        if state == JobStatus.cancelled:
            r = self.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=self.headers)
            assert r.status_code == 202, r.text
        elif state == JobStatus.succeeded:
            with self.factory() as session:
                repo = JobRepo(session)
                assert repo.claim(job_id, worker="fuzz", stale_after_s=60) is not None
                assert repo.finish(job_id, worker="fuzz", status=JobStatus.succeeded)
        if state != JobStatus.queued:
            self._add_artifact(job_id)
        return job_id

    def _add_artifact(self, job_id: str) -> None:
        rel = f"runs/{job_id}/{ARTIFACT}"
        path = self.settings.data_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        with self.factory() as session:
            session.add(
                Artifact(job_id=job_id, name=ARTIFACT, path=rel, size_bytes=2, sha256="0" * 64)
            )
            session.commit()


@pytest.fixture
def world(client: TestClient, alice: Headers, settings: Settings, dataset_zip: bytes) -> World:
    return World(client, alice, settings, dataset_zip)


@pytest.fixture
def stub_teacher_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def reject(path: Path, **_: Any) -> Any:
        raise TeacherCheckError(f"{path}: not a readable weights-only checkpoint (fuzz stub)")

    monkeypatch.setattr(api.routes.teachers, "check_teacher_file", reject)


def _call(case: Any, client: TestClient, headers: Headers) -> Any:
    response = case.call(app=client.app, headers=headers)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}\n"
        f"{response.text[:2000]}\nreproduce: {case.as_curl_command(headers=headers)}"
    )
    return response


@schema.exclude(path=EVENTS).exclude(method="POST", path=UPLOADS).parametrize()
@hypothesis.settings(_FUZZ, max_examples=20)
def test_api_any_input_never_returns_5xx(
    case: Any, client: TestClient, world: World, alice: Headers
) -> None:
    world.ensure()
    _call(case, client, alice)
    if case.path_parameters:
        real = case.derive(keep_auth=True)
        real.path_parameters.update(world.real_path(case.path_parameters))
        _call(real, client, alice)
        if "name" in real.path_parameters:
            real = real.derive(keep_auth=True)
            real.path_parameters["name"] = ARTIFACT
            _call(real, client, alice)
    elif case.path == "/api/v1/jobs" and case.method == "POST" and isinstance(case.body, dict):
        real = case.derive(keep_auth=True)
        real.body.clear()
        real.body.update(world.real_body(case.body))
        _call(real, client, alice)


@schema.include(method="POST", path=UPLOADS).parametrize()
@hypothesis.settings(_FUZZ, max_examples=5)
def test_api_upload_any_input_never_returns_5xx_nor_leaves_files(
    case: Any, client: TestClient, alice: Headers, settings: Settings, stub_teacher_check: None
) -> None:
    _call(case, client, alice)
    assert list(settings.tmp_dir.iterdir()) == []
