"""Receiving uploads: stream to a temp file under ``data_dir/tmp`` with a size limit.

Everything here runs in a worker thread (the routes are sync); files are written into a private
temp directory that the caller removes, so a failed upload never leaves anything behind.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import HTTPException, UploadFile

__all__ = ["save_upload", "staging_dir"]

_CHUNK = 1 << 20


@contextmanager
def staging_dir(tmp_root: Path) -> Iterator[Path]:
    """A private temp directory, removed on exit whatever happens."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="upload-", dir=tmp_root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def save_upload(upload: UploadFile, dest: Path, *, field: str, max_bytes: int) -> tuple[int, str]:
    """Copy ``upload`` to ``dest``; returns ``(size, sha256)``. 413 above ``max_bytes``."""
    h = hashlib.sha256()
    size = 0
    upload.file.seek(0)
    with dest.open("wb") as out:
        while chunk := upload.file.read(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise HTTPException(
                    413, {"field": field, "message": f"{field}: larger than {max_bytes} bytes"}
                )
            h.update(chunk)
            out.write(chunk)
    if size == 0:
        raise HTTPException(422, {"field": field, "message": f"{field}: the file is empty"})
    return size, h.hexdigest()
