"""``/api/v1/teachers``: upload a teacher checkpoint (strictly checked), list, read, delete."""

from __future__ import annotations

import json
import os
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status
from sqlalchemy import select

from api.db.models import Teacher
from api.deps import CurrentUser, SessionDep, SettingsDep, get_owned, unprocessable
from api.routes._stored import delete_stored
from api.schemas import TeacherRead
from api.teacher_check import TeacherCheckError, check_teacher_file
from api.uploads import clean_name, save_upload, staging_dir
from bmgkd_core.config import ARCHITECTURES

router = APIRouter(prefix="/teachers", tags=["teachers"])


def _parse_class_names(raw: str | None) -> list[str] | None:
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    if text.startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise unprocessable("class_names", f"not a JSON list of strings ({exc})") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise unprocessable("class_names", "must be a JSON list of non-empty strings")
    else:
        names = [n.strip() for n in text.split(",")]
        if not all(names):
            raise unprocessable("class_names", "empty name in the comma-separated list")
    if len(set(names)) != len(names):
        raise unprocessable("class_names", "names must be unique")
    return names


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TeacherRead)
def upload_teacher(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="a bmgkd model.pt or a torchvision state dict")],
    arch: Annotated[str | None, Form(description="required for a plain state dict")] = None,
    class_names: Annotated[
        str | None, Form(description="JSON list or comma-separated; required for a state dict")
    ] = None,
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> Teacher:
    """Load with ``weights_only=True`` and check every key and shape strictly (in a child
    process); ``422`` names the missing/unexpected keys. The report is stored."""
    if arch is not None and arch not in ARCHITECTURES:
        raise unprocessable("arch", f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    names = _parse_class_names(class_names)
    with staging_dir(settings.tmp_dir) as tmp:
        path = tmp / "teacher.pt"
        size, digest = save_upload(file, path, field="file", max_bytes=settings.max_teacher_bytes)
        try:
            check = check_teacher_file(
                path, arch=arch, class_names=names, timeout_s=settings.teacher_check_timeout_s
            )
        except TeacherCheckError as exc:
            raise unprocessable(
                "file", str(exc).replace(str(path), file.filename or "file")
            ) from exc
        storage = f"teachers/{digest}.pt"
        final = settings.data_dir / storage
        final.parent.mkdir(parents=True, exist_ok=True)
        created = not final.exists()
        if created:
            os.replace(path, final)
        report = {**check.report, "path": clean_name(file.filename, "teacher.pt")}
        teacher = Teacher(
            user_id=user.id,
            name=clean_name(name or file.filename, "teacher"),
            arch=check.arch,
            class_names=check.class_names,
            sha256=digest,
            storage_path=storage,
            size_bytes=size,
            load_report=report,
        )
        session.add(teacher)
        try:
            session.commit()
        except BaseException:
            session.rollback()
            if created:
                final.unlink(missing_ok=True)
            raise
        return teacher


@router.get("", response_model=list[TeacherRead])
def list_teachers(user: CurrentUser, session: SessionDep) -> list[Teacher]:
    rows = session.execute(
        select(Teacher).where(Teacher.user_id == user.id).order_by(Teacher.created_at.desc())
    )
    return list(rows.scalars())


@router.get("/{teacher_id}", response_model=TeacherRead)
def read_teacher(teacher_id: str, user: CurrentUser, session: SessionDep) -> Teacher:
    return get_owned(session, Teacher, teacher_id, user)


@router.delete("/{teacher_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_teacher(
    teacher_id: str, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> Response:
    delete_stored(session, get_owned(session, Teacher, teacher_id, user), settings.data_dir)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
