"""Worker fixtures: a migrated SQLite database with a user, a dataset row and job factory."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.db.base import make_engine, make_session_factory
from api.db.migrate import upgrade
from api.db.models import Dataset, Job, JobKind
from api.db.repo import UserRepo
from api.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        broker_url="memory://",
        heartbeat_interval_s=0.2,
        heartbeat_stale_s=1.0,
        progress_interval_s=0.0,
    )


@pytest.fixture
def factory(settings: Settings) -> sessionmaker[Session]:
    settings.ensure_dirs()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return make_session_factory(engine)


@pytest.fixture
def make_job(
    factory: sessionmaker[Session], settings: Settings, tiny_coco: Path
) -> Callable[..., str]:
    """Insert a user and a dataset (tiny_coco copied into data_dir); returns a job factory."""
    with factory() as session:
        user, _ = UserRepo(session).create_user("alice")
        shutil.copytree(tiny_coco, settings.datasets_dir / "tiny")
        ds = Dataset(
            user_id=user.id,
            name="tiny",
            format="coco",
            content_hash="x" * 64,
            storage_path="datasets/tiny",
            num_images=10,
            num_boxes=17,
            class_names=["bird", "cat", "dog"],
            stats={},
            size_bytes=1,
        )
        session.add(ds)
        session.commit()
        user_id, ds_id = user.id, ds.id

    def _make(**train: Any) -> str:
        config = {
            "data": {"root": "<dataset>", "image_size": 64, "num_workers": 0},
            "model": {"arch": "retinanet_resnet18_fpn"},
            "optim": {"warmup_steps": 0},
            "train": {"max_steps": 2, "batch_size": 2, "device": "cpu", "amp": False, **train},
        }
        with factory() as session:
            job = Job(
                user_id=user_id, kind=JobKind.train, dataset_id=ds_id, config=config, queue="cpu"
            )
            session.add(job)
            session.commit()
            return job.id

    return _make
