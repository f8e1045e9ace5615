"""HTTP-layer fixtures: the app on a private SQLite database with a recording FakeQueue."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.db.repo import UserRepo
from api.main import create_app
from api.queue import FakeQueue
from api.settings import Settings


def zip_dir(root: Path, *, prefix: str = "") -> bytes:
    """Zip ``root``'s files (paths relative to root, under ``prefix``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(root).as_posix())
    return buf.getvalue()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", broker_url="memory://", _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def queue() -> FakeQueue:
    return FakeQueue()


@pytest.fixture
def client(settings: Settings, queue: FakeQueue) -> Iterator[TestClient]:
    app = create_app(settings, queue=queue)
    with TestClient(app) as c:
        yield c


def _make_user(client: TestClient, name: str) -> dict[str, str]:
    with client.app.state.session_factory() as session:  # type: ignore[attr-defined]
        _, key = UserRepo(session).create_user(name)
        session.commit()
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def alice(client: TestClient) -> dict[str, str]:
    return _make_user(client, "alice")


@pytest.fixture
def bob(client: TestClient) -> dict[str, str]:
    return _make_user(client, "bob")


@pytest.fixture
def dataset_zip(tiny_coco: Path) -> bytes:
    return zip_dir(tiny_coco, prefix="tiny/")


@pytest.fixture
def dataset_id(client: TestClient, alice: dict[str, str], dataset_zip: bytes) -> str:
    r = client.post(
        "/api/v1/datasets",
        headers=alice,
        files={"file": ("tiny.zip", dataset_zip, "application/zip")},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])
