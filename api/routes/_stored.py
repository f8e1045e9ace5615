"""Deleting a stored upload (dataset or teacher): refuse while jobs use it, and remove its files
only when no other row (another user's identical upload) shares them."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import HTTPException
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.db.models import Dataset, Job, Teacher

__all__ = ["delete_stored"]


def delete_stored(session: Session, obj: Dataset | Teacher, data_dir: Path) -> None:
    """Delete ``obj`` (409 while jobs use it) and its storage when nothing else refers to it."""
    model = type(obj)
    what = model.__tablename__[:-1]
    column = Job.dataset_id if isinstance(obj, Dataset) else Job.teacher_id
    used = session.execute(
        select(func.count()).select_from(Job).where(column == obj.id)
    ).scalar_one()
    if used:
        raise HTTPException(409, f"{what} {obj.id} is used by {used} job(s); delete them first")
    storage = obj.storage_path
    session.delete(obj)
    session.commit()
    shared = session.execute(
        select(func.count()).select_from(model).where(model.storage_path == storage)
    ).scalar_one()
    if not shared:
        path = data_dir / storage
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
