"""``/api/v1/datasets``: upload (zip / tar.gz, COCO or VOC), list, read, delete."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.archive import ArchiveError, ArchiveLimits, content_hash, extract_archive
from api.db.models import Dataset
from api.deps import CurrentUser, SessionDep, SettingsDep, get_owned, unprocessable
from api.routes._stored import delete_stored
from api.schemas import DatasetDetail, DatasetRead
from api.uploads import clean_name, save_upload, scrub_paths, staging_dir
from bmgkd_core.data.validate import validate_dataset

router = APIRouter(prefix="/datasets", tags=["datasets"])
log = logging.getLogger(__name__)

_MAX_ISSUES = 200


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetDetail,
    responses={200: {"model": DatasetDetail, "description": "the same content already exists"}},
)
def upload_dataset(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile, File(description="a .zip or .tar.gz of a COCO or VOC dataset")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    format: Annotated[Literal["auto", "coco", "voc"], Form()] = "auto",
) -> Dataset:
    """Unpack safely, validate every split with the engine's validator, store by content hash.

    A dataset with errors gets ``422`` listing every problem (file and record) and nothing is
    kept. Uploading content this user already has returns the existing dataset (``200``).
    """
    limits = ArchiveLimits(
        max_files=settings.max_archive_files,
        max_total_bytes=settings.max_unpacked_bytes,
        max_member_bytes=min(settings.max_unpacked_bytes, 2 * 1024**3),
    )
    with staging_dir(settings.tmp_dir) as tmp:
        archive = tmp / "upload.bin"
        save_upload(file, archive, field="file", max_bytes=settings.max_upload_bytes)
        try:
            extracted = extract_archive(archive, tmp / "x", limits=limits)
        except ArchiveError as exc:
            raise unprocessable("file", str(exc), member=exc.member) from exc
        archive.unlink()
        report = validate_dataset(extracted.root, format=format)
        roots = [extracted.root.resolve(), extracted.root, tmp.resolve(), tmp]
        if not report.ok:
            doc = report.to_dict(max_issues=_MAX_ISSUES)
            raise unprocessable(
                "file",
                str(
                    scrub_paths(
                        f"the dataset has {doc['num_errors']} error(s); first: "
                        f"{report.errors[0].format_line()}",
                        roots,
                    )
                ),
                issues=scrub_paths(doc["issues"], roots),
                num_errors=doc["num_errors"],
                truncated=doc["truncated"],
            )
        digest = content_hash(extracted.root)
        existing = session.execute(
            select(Dataset).where(Dataset.user_id == user.id, Dataset.content_hash == digest)
        ).scalar_one_or_none()
        if existing is not None:
            response.status_code = status.HTTP_200_OK
            return existing
        storage = f"datasets/{digest}"
        final = settings.data_dir / storage
        created_storage = _move_into_place(extracted.root, final)
        doc = report.to_dict(max_issues=_MAX_ISSUES)
        doc.pop("root", None)  # the staging path means nothing to the user
        train = report.splits.get("train") or next(iter(report.splits.values()), {})
        class_counts = report.class_counts.get("train") or next(
            iter(report.class_counts.values()), {}
        )
        dataset = Dataset(
            user_id=user.id,
            name=clean_name(name or Path(file.filename or "").name.split(".")[0], "dataset"),
            format=report.format or "coco",
            content_hash=digest,
            storage_path=storage,
            num_images=sum(c["images"] for c in report.splits.values()),
            num_boxes=sum(c["boxes"] for c in report.splits.values()),
            class_names=list(class_counts),
            stats=scrub_paths({**doc, "train": train}, roots),
            size_bytes=extracted.total_bytes,
        )
        session.add(dataset)
        try:
            session.commit()
        except IntegrityError:  # the same upload raced in twice
            session.rollback()
            if created_storage:
                shutil.rmtree(final, ignore_errors=True)
            raise HTTPException(409, "this dataset is being uploaded concurrently") from None
        except BaseException:
            session.rollback()
            if created_storage:
                shutil.rmtree(final, ignore_errors=True)
            raise
        return dataset


def _move_into_place(src: Path, final: Path) -> bool:
    """Move the unpacked tree to its content-addressed place; False when it already exists."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        return False
    try:
        os.rename(src, final)
    except OSError:
        if final.exists():  # another upload of the same content won the race
            return False
        shutil.move(str(src), str(final))
    return True


@router.get("", response_model=list[DatasetRead])
def list_datasets(user: CurrentUser, session: SessionDep) -> list[Dataset]:
    rows = session.execute(
        select(Dataset).where(Dataset.user_id == user.id).order_by(Dataset.created_at.desc())
    )
    return list(rows.scalars())


@router.get("/{dataset_id}", response_model=DatasetDetail)
def read_dataset(dataset_id: str, user: CurrentUser, session: SessionDep) -> Dataset:
    """Counts of images and boxes, per-class box counts per split, and the validator's warnings."""
    return get_owned(session, Dataset, dataset_id, user)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(
    dataset_id: str, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> Response:
    delete_stored(session, get_owned(session, Dataset, dataset_id, user), settings.data_dir)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
