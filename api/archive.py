"""Safe unpacking of user-uploaded dataset archives (.zip, .tar.gz, plain .tar).

The API process imports this module, so it uses the standard library only (no torch, no FastAPI).
Every member name and type is checked before anything is written, sizes are checked both as
declared in the headers and as actually streamed, and a failed extraction leaves nothing behind.
Whether the extracted files form a valid COCO or VOC dataset is checked elsewhere
(:mod:`bmgkd_core.data.validate`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal, Protocol

__all__ = [
    "ArchiveError",
    "ArchiveKind",
    "ArchiveLimits",
    "Extracted",
    "content_hash",
    "extract_archive",
]

logger = logging.getLogger(__name__)

ArchiveKind = Literal["zip", "tar.gz", "tar"]
_EntryType = Literal["file", "dir", "link", "device", "other"]

_CHUNK_BYTES = 1024**2
_RATIO_MIN_BYTES = 1024**2  # below this much uncompressed data the ratio guard does not apply
_TRAILER_MAX_BYTES = 1024**2  # zero padding allowed after a tar's end-of-archive marker
_ENTRY_SLACK = 1000  # directory and junk entries allowed on top of 4 x max_files
_FILE_MODE = 0o644
_DIR_MODE = 0o755
_MAX_COMPONENT_BYTES = 255
_ROOT = PurePosixPath(".")
_OPEN_FLAGS: int = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # local file header; end of central dir (empty zip)
_GZIP_MAGIC = b"\x1f\x8b"
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_JUNK_FILES = frozenset({".ds_store", "thumbs.db"})  # compared case-folded
# What a damaged archive raises while it is *read*. Writes to dest are never wrapped in this.
_READ_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,  # unsupported zip compression method
    OSError,  # gzip.BadGzipFile, bz2 "Invalid data stream"
    ValueError,  # UnicodeDecodeError in names, bad numeric header fields
    OverflowError,
    struct.error,
)


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _Seekable(_Readable, Protocol):
    def seek(self, offset: int, /) -> int: ...


class ArchiveError(ValueError):
    """Bad upload: the message names the archive member (file) and the problem.

    Attributes:
        member: The member name as stored in the archive, or ``None`` when the problem is not
            tied to one member (not an archive, limits on the whole archive, empty archive).
    """

    def __init__(self, message: str, *, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


@dataclass(frozen=True)
class ArchiveLimits:
    """Limits applied while extracting an upload.

    Attributes:
        max_files: Most regular files (junk entries not counted).
        max_total_bytes: Most uncompressed bytes over all extracted files.
        max_member_bytes: Most uncompressed bytes of one file.
        max_ratio: Most uncompressed bytes (all members, junk included) per byte of the archive
            on disk; applies once more than 1 MiB is uncompressed (zip-bomb guard).
    """

    max_files: int = 20_000
    max_total_bytes: int = 2 * 1024**3
    max_member_bytes: int = 512 * 1024**2
    max_ratio: float = 200.0

    def __post_init__(self) -> None:
        for name in ("max_files", "max_total_bytes", "max_member_bytes", "max_ratio"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"ArchiveLimits.{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class Extracted:
    """Result of :func:`extract_archive`.

    Attributes:
        root: The dataset root inside dest: the single top-level directory when the archive
            wraps everything in one, else dest itself.
        files: Number of regular files written.
        total_bytes: Bytes written over all files.
        kind: Archive format detected from the magic bytes.
    """

    root: Path
    files: int
    total_bytes: int
    kind: ArchiveKind


def extract_archive(src: Path, dest: Path, *, limits: ArchiveLimits = ArchiveLimits()) -> Extracted:
    """Unpack the upload ``src`` into ``dest`` safely.

    Args:
        src: The uploaded file; its kind is detected from its magic bytes, not its name.
        dest: An empty or non-existent directory; it is created when missing.
        limits: File count, size and compression-ratio limits.

    Returns:
        Where the dataset root is and how much was written.

    Raises:
        ArchiveError: The upload is not a supported archive, is corrupt, breaks a rule (unsafe
            path, link, device, duplicate, file/directory clash) or a limit, or holds no files.
            Nothing is left under ``dest`` then (``dest`` is removed when this call created it).
        ValueError: ``dest`` exists and is not an empty directory (a caller bug, not a bad upload).
    """
    dest_existed = _check_dest(dest)
    kind = _detect_kind(src)
    dest.mkdir(parents=True, exist_ok=True)
    plan = _Plan(limits, archive_bytes=src.stat().st_size)
    writer = _Writer(dest)
    try:
        if kind == "zip":
            _extract_zip(src, writer, plan)
        else:
            _extract_tar(src, kind, writer, plan)
    except BaseException:
        _remove_partial(dest, keep_dest=dest_existed)
        raise
    root = _dataset_root(dest, plan)
    logger.info(
        "extracted %s archive %s: %d files, %d bytes, root %s",
        kind,
        src,
        len(plan.files),
        plan.written_bytes,
        root,
    )
    return Extracted(root=root, files=len(plan.files), total_bytes=plan.written_bytes, kind=kind)


def content_hash(root: Path) -> str:
    """Fingerprint the regular files under ``root``.

    The digest is sha256 over the sorted ``(POSIX relative path, sha256 of the file)`` pairs, so
    it does not depend on archive order, timestamps, permissions or the machine. Symlinks and
    empty directories are not part of it.

    Args:
        root: Directory to fingerprint (usually :attr:`Extracted.root`).

    Returns:
        Lower-case hex sha256.

    Raises:
        NotADirectoryError: ``root`` is not a directory.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"content_hash needs a directory, got {root}")
    entries: list[tuple[str, str]] = []
    for dirpath, _dirnames, filenames in os.walk(root, onerror=_raise_walk_error):
        for filename in filenames:
            path = Path(dirpath, filename)
            if not stat.S_ISREG(path.lstat().st_mode):
                continue
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            entries.append((path.relative_to(root).as_posix(), digest))
    total = hashlib.sha256()
    for rel, digest in sorted(entries):  # code-point order == UTF-8 byte order
        # Paths never contain NUL and digests have a fixed length: the encoding is unambiguous.
        total.update(rel.encode("utf-8", "surrogateescape") + b"\0" + digest.encode() + b"\n")
    return total.hexdigest()


def _raise_walk_error(error: OSError) -> None:
    raise error


# ---------------------------------------------------------------------------------------------
# Detection, dest handling


def _check_dest(dest: Path) -> bool:
    """Return whether ``dest`` exists; raise ValueError unless it is empty or missing."""
    if not dest.exists():
        return False
    if not dest.is_dir():
        raise ValueError(f"dest must be an empty or non-existent directory, got a file: {dest}")
    if any(dest.iterdir()):
        raise ValueError(f"dest must be an empty or non-existent directory, got non-empty {dest}")
    return True


def _detect_kind(src: Path) -> ArchiveKind:
    with src.open("rb") as f:
        head = f.read(tarfile.BLOCKSIZE)
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if head.startswith(_GZIP_MAGIC):
        with _reading(None), gzip.open(src, "rb") as gz:
            block = gz.read(tarfile.BLOCKSIZE)
        if _is_tar_block(block):
            return "tar.gz"
        raise ArchiveError("not a .zip or .tar.gz archive: gzip data that does not hold a tar")
    if _is_tar_block(head) and tarfile.is_tarfile(src):
        return "tar"
    raise ArchiveError(f"not a .zip or .tar.gz archive (file starts with {head[:8]!r})")


def _is_tar_block(block: bytes) -> bool:
    """Whether ``block`` is an uncompressed tar header (or the end marker of an empty tar)."""
    if len(block) < tarfile.BLOCKSIZE:
        return False
    if block.count(0) == tarfile.BLOCKSIZE:
        return True
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _remove_partial(dest: Path, *, keep_dest: bool) -> None:
    """Remove what extraction wrote (no links are ever created, so rmtree is safe)."""
    try:
        if not keep_dest:
            shutil.rmtree(dest)
            return
        for child in dest.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    except OSError:
        logger.exception("could not remove partial extraction under %s", dest)


def _dataset_root(dest: Path, plan: _Plan) -> Path:
    has_top_files = any(len(path.parts) == 1 for path in plan.files)
    tops = {path.parts[0] for path in plan.files | plan.dirs}
    if not has_top_files and len(tops) == 1:
        return dest / tops.pop()
    return dest


@contextlib.contextmanager
def _reading(member: str | None) -> Iterator[None]:
    """Turn the errors of a damaged archive raised inside the block into ArchiveError."""
    try:
        yield
    except ArchiveError:
        raise
    except _READ_ERRORS as exc:
        if member is None:
            raise ArchiveError(f"corrupt or truncated archive ({exc})") from exc
        raise _member_error(member, f"corrupt or truncated data ({exc})") from exc


def _member_error(member: str, problem: str) -> ArchiveError:
    return ArchiveError(f"archive member {member!r}: {problem}", member=member)


# ---------------------------------------------------------------------------------------------
# Member rules and limits


def _split_member_path(name: str) -> tuple[str, ...]:
    """Check a member name and return its components (empty for the archive root itself)."""
    if not name:
        raise _member_error(name, "empty name")
    if "\x00" in name:
        raise _member_error(name, "name contains a NUL byte")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _member_error(name, "name is not valid UTF-8") from None
    posix = name.replace("\\", "/")  # Windows tools write backslash separators
    if posix.startswith("/"):
        raise _member_error(name, "absolute path")
    if _DRIVE_RE.match(posix):
        raise _member_error(name, "path starts with a drive letter")
    parts = tuple(part for part in posix.split("/") if part not in ("", "."))
    if ".." in parts:
        raise _member_error(name, "path escapes the archive root")
    if any(len(part.encode("utf-8")) > _MAX_COMPONENT_BYTES for part in parts):
        raise _member_error(name, f"a path component is longer than {_MAX_COMPONENT_BYTES} bytes")
    return parts


def _is_junk(parts: tuple[str, ...], entry: _EntryType) -> bool:
    if "__MACOSX" in parts:
        return True
    if entry == "dir" or not parts:
        return False
    basename = parts[-1]
    return basename.casefold() in _JUNK_FILES or basename.startswith("._")


class _Plan:
    """Applies the member rules and the limits, one entry at a time, in archive order."""

    def __init__(self, limits: ArchiveLimits, *, archive_bytes: int) -> None:
        self.limits = limits
        self.archive_bytes = max(archive_bytes, 1)
        self.files: set[PurePosixPath] = set()
        self.dirs: set[PurePosixPath] = set()
        self.entries = 0
        self.declared_bytes = 0  # files to write
        self.declared_all_bytes = 0  # every member, junk included (ratio guard)
        self.written_bytes = 0

    def add(self, name: str, entry: _EntryType, size: int) -> PurePosixPath | None:
        """Check one member; return its relative path, or None when it is skipped."""
        parts = _split_member_path(name)
        if size < 0:  # GNU base-256 size fields can encode negative numbers
            raise _member_error(name, f"negative size {size}")
        self.entries += 1
        max_entries = 4 * self.limits.max_files + _ENTRY_SLACK
        if self.entries > max_entries:
            raise ArchiveError(f"archive has more than {max_entries} members", member=name)
        self.declared_all_bytes += size
        self.check_ratio(self.declared_all_bytes)
        if _is_junk(parts, entry):
            logger.debug("skipping junk archive member %r", name)
            return None
        if entry == "link":
            raise _member_error(name, "symbolic and hard links are not allowed")
        if entry == "device":
            raise _member_error(name, "device files, FIFOs and sockets are not allowed")
        if entry == "other":
            raise _member_error(name, "unsupported member type")
        if not parts:
            if entry == "dir":  # "./" entry of `tar -C dir .`
                return None
            raise _member_error(name, "empty path")
        path = PurePosixPath(*parts)
        if entry == "dir":
            self._add_dir(name, path)
        else:
            self._add_file(name, path, size)
        return path

    def _add_dir(self, name: str, path: PurePosixPath) -> None:
        # A directory listed twice is harmless and some tools write that; only files must be unique.
        if path in self.files:
            raise _member_error(name, "path is both a file and a directory")
        self._add_parents(name, path)
        self.dirs.add(path)

    def _add_file(self, name: str, path: PurePosixPath, size: int) -> None:
        if path in self.files:
            raise _member_error(name, "duplicate member path")
        if path in self.dirs:
            raise _member_error(name, "path is both a file and a directory")
        self._add_parents(name, path)
        limits = self.limits
        if len(self.files) >= limits.max_files:
            raise ArchiveError(f"archive has more than {limits.max_files} files", member=name)
        if size > limits.max_member_bytes:
            raise _member_error(
                name,
                f"{size} bytes uncompressed, over the per-file limit {limits.max_member_bytes}",
            )
        self.declared_bytes += size
        if self.declared_bytes > limits.max_total_bytes:
            raise ArchiveError(
                f"archive expands to more than {limits.max_total_bytes} bytes", member=name
            )
        self.files.add(path)

    def _add_parents(self, name: str, path: PurePosixPath) -> None:
        for parent in path.parents:
            if parent in self.dirs or parent == _ROOT:  # its ancestors were checked already
                break
            if parent in self.files:
                raise _member_error(name, f"path is inside {parent.as_posix()!r}, which is a file")
            self.dirs.add(parent)

    def check_ratio(self, uncompressed: int) -> None:
        """Raise when ``uncompressed`` bytes from this archive's size exceed ``max_ratio``."""
        if uncompressed <= _RATIO_MIN_BYTES:
            return
        ratio = uncompressed / self.archive_bytes
        if ratio > self.limits.max_ratio:
            raise ArchiveError(
                f"archive expands {ratio:.0f}x ({uncompressed} bytes from {self.archive_bytes}), "
                f"over the compression-ratio limit {self.limits.max_ratio:g} (zip bomb?)"
            )

    def count_written(self, name: str, nbytes: int) -> None:
        """Account for bytes actually streamed out of the archive (headers may lie)."""
        self.written_bytes += nbytes
        if self.written_bytes > self.limits.max_total_bytes:
            raise ArchiveError(
                f"archive expands to more than {self.limits.max_total_bytes} bytes", member=name
            )
        self.check_ratio(self.written_bytes)


# ---------------------------------------------------------------------------------------------
# Writing


class _Writer:
    """Creates directories and files under dest: never follows links, never overwrites."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self._made: set[PurePosixPath] = set()

    def make_dirs(self, path: PurePosixPath) -> None:
        if path in self._made:
            return
        for part in reversed((path, *path.parents)):
            if part == _ROOT or part in self._made:
                continue
            target = self.dest / part
            os.mkdir(target, _DIR_MODE)
            os.chmod(target, _DIR_MODE)  # the umask may have narrowed it
            self._made.add(part)

    def write_file(
        self, path: PurePosixPath, reader: _Readable, *, name: str, declared: int, plan: _Plan
    ) -> int:
        """Stream ``reader`` into ``path`` in chunks; return the bytes written."""
        self.make_dirs(path.parent)
        cap = min(declared, plan.limits.max_member_bytes)
        written = 0
        fd = os.open(self.dest / path, _OPEN_FLAGS, _FILE_MODE)
        with open(fd, "wb", closefd=True) as out:
            os.chmod(out.fileno(), _FILE_MODE)
            while True:
                with _reading(name):
                    chunk = reader.read(_CHUNK_BYTES)
                if not chunk:
                    break
                written += len(chunk)
                if written > cap:
                    raise _member_error(
                        name, f"more than {cap} bytes of data; its header declares {declared}"
                    )
                plan.count_written(name, len(chunk))
                out.write(chunk)
        return written


# ---------------------------------------------------------------------------------------------
# Formats


def _zip_entry_type(info: zipfile.ZipInfo) -> _EntryType:
    """Entry type from the unix mode bits in external_attr (0 when a non-unix tool wrote it)."""
    fmt = stat.S_IFMT(info.external_attr >> 16)
    if fmt == stat.S_IFLNK:
        return "link"
    if fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
        return "device"
    if fmt == stat.S_IFDIR or info.orig_filename.replace("\\", "/").endswith("/"):
        return "dir"
    if fmt in (0, stat.S_IFREG):
        return "file"
    return "other"


def _extract_zip(src: Path, writer: _Writer, plan: _Plan) -> None:
    with _reading(None):
        archive = zipfile.ZipFile(src)
    with archive:
        planned: list[tuple[zipfile.ZipInfo, PurePosixPath, _EntryType]] = []
        for info in archive.infolist():  # the whole central directory is checked up front
            name = info.orig_filename
            entry = _zip_entry_type(info)
            path = plan.add(name, entry, info.file_size)
            if path is None:
                continue
            if entry == "file" and info.flag_bits & 0x1:
                raise _member_error(name, "encrypted members are not supported")
            planned.append((info, path, entry))
        if not plan.files:
            raise ArchiveError("archive is empty")
        for info, path, entry in planned:
            if entry == "dir":
                writer.make_dirs(path)
                continue
            name = info.orig_filename
            with _reading(name):
                reader = archive.open(info)
            with reader:
                writer.write_file(path, reader, name=name, declared=info.file_size, plan=plan)


def _tar_entry_type(member: tarfile.TarInfo) -> _EntryType:
    if member.issym() or member.islnk():
        return "link"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device"
    if member.isdir():
        return "dir"
    if member.isreg():
        return "file"
    return "other"


def _extract_tar(src: Path, kind: ArchiveKind, writer: _Writer, plan: _Plan) -> None:
    # Random-access mode over a sequential reader: tarfile only seeks forward here, so a .tar.gz
    # is decompressed once, and GzipFile (unlike tarfile's own "r|gz") checks the gzip trailer.
    with src.open("rb") as raw, contextlib.ExitStack() as stack:
        stream: IO[bytes] | gzip.GzipFile = raw
        if kind == "tar.gz":
            stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        with _reading(None):
            archive = stack.enter_context(tarfile.open(fileobj=stream, mode="r:"))
        while True:
            with _reading(None):
                member = archive.next()
            if member is None:
                break
            _extract_tar_member(archive, member, writer, plan)
        _check_tar_end(stream, archive.offset)
    if not plan.files:
        raise ArchiveError("archive is empty")


def _extract_tar_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, writer: _Writer, plan: _Plan
) -> None:
    name = member.name
    entry = _tar_entry_type(member)
    path = plan.add(name, entry, member.size)
    if path is None:
        return
    if entry == "dir":
        writer.make_dirs(path)
        return
    with _reading(name):
        reader = archive.extractfile(member)
    if reader is None:  # not reached: only regular files get here
        raise _member_error(name, "unsupported member type")
    with reader:
        writer.write_file(path, reader, name=name, declared=member.size, plan=plan)


def _check_tar_end(stream: _Seekable, offset: int) -> None:
    """Require the end-of-archive marker where tarfile stopped, then only zero padding.

    tarfile also stops quietly at a truncated or garbled header after the first member; this
    tells that apart from a proper end. Reading to the end also makes GzipFile check its trailer.
    """
    with _reading(None):
        stream.seek(offset)
        marker = stream.read(tarfile.BLOCKSIZE)
        if len(marker) < tarfile.BLOCKSIZE or marker.count(0) != tarfile.BLOCKSIZE:
            raise ArchiveError(f"corrupt or truncated archive: no tar header at offset {offset}")
        padding = 0
        while chunk := stream.read(_CHUNK_BYTES):
            padding += len(chunk)
            if padding > _TRAILER_MAX_BYTES or chunk.count(0) != len(chunk):
                raise ArchiveError("unexpected data after the end of the tar archive")
