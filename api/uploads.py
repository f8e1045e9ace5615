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

__all__ = ["clean_name", "save_upload", "scrub_paths", "staging_dir"]

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


def clean_name(raw: str | None, fallback: str) -> str:
    """A display name: control characters dropped, at most 200 characters, never empty."""
    text = "".join(ch for ch in (raw or "") if ch.isprintable()).strip()[:200]
    return text or fallback


def scrub_paths(obj: object, roots: list[Path]) -> object:
    """Replace server paths (the staging directories) in messages by nothing / the file name."""
    if isinstance(obj, str):
        for root in roots:
            obj = obj.replace(str(root) + "/", "").replace(str(root), ".")
        return obj
    if isinstance(obj, list):
        return [scrub_paths(v, roots) for v in obj]
    if isinstance(obj, dict):
        return {k: scrub_paths(v, roots) for k, v in obj.items()}
    return obj
