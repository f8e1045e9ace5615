"""Safe extraction of uploaded dataset archives: layout, fingerprints, every rejection path."""

from __future__ import annotations

import gzip
import io
import os
import stat
import struct
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import pytest

from api.archive import (
    ArchiveError,
    ArchiveLimits,
    _Plan,
    _Writer,
    content_hash,
    extract_archive,
)

COCO_FILES: list[tuple[str, bytes]] = [
    ("annotations/train.json", b'{"images": [], "annotations": [], "categories": []}'),
    ("images/train/0001.jpg", b"\xff\xd8\xff\xe0 fake jpeg 1"),
    ("images/train/0002.jpg", b"\xff\xd8\xff\xe0 fake jpeg 2"),
]


def _write_zip(path: Path, members: Sequence[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _add_tar(
    tf: tarfile.TarFile,
    name: str,
    data: bytes = b"",
    *,
    kind: bytes = tarfile.REGTYPE,
    linkname: str = "",
    mode: int = 0o644,
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = linkname
    info.mtime = 1_700_000_000
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _write_tar(path: Path, members: Sequence[tuple[str, bytes]], *, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for name, data in members:
            _add_tar(tf, name, data)
    return path


def _extract_error(src: Path, dest: Path, limits: ArchiveLimits | None = None) -> ArchiveError:
    with pytest.raises(ArchiveError) as info:
        extract_archive(src, dest, limits=limits or ArchiveLimits())
    assert not dest.exists(), "a failed extraction must remove the dest it created"
    return info.value


def _files_under(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- round trips -----------------------------------------------------------------------------


def test_extract_archive_zip_with_wrapping_folder_roots_at_folder(tmp_path: Path) -> None:
    src = _write_zip(tmp_path / "up.zip", [(f"coco/{n}", d) for n, d in COCO_FILES])
    result = extract_archive(src, tmp_path / "out")
    assert result.kind == "zip"
    assert result.root == tmp_path / "out" / "coco"
    assert result.files == 3
    assert result.total_bytes == sum(len(d) for _, d in COCO_FILES)
    assert _files_under(result.root) == dict(COCO_FILES)


def test_extract_archive_targz_without_wrapping_folder_roots_at_dest(tmp_path: Path) -> None:
    src = _write_tar(tmp_path / "up.tar.gz", COCO_FILES)
    dest = tmp_path / "out"
    dest.mkdir()  # an existing empty dest is fine
    result = extract_archive(src, dest)
    assert result.kind == "tar.gz"
    assert result.root == dest
    assert _files_under(dest) == dict(COCO_FILES)


def test_extract_archive_dot_slash_tar_with_one_folder_roots_at_folder(tmp_path: Path) -> None:
    # `tar -C parent .` style: a "." entry, then "./voc/..." members; the kind comes from the
    # magic bytes, not the misleading file name.
    src = tmp_path / "upload.zip"
    with tarfile.open(src, "w") as tf:
        _add_tar(tf, ".", kind=tarfile.DIRTYPE, mode=0o755)
        _add_tar(tf, "./voc", kind=tarfile.DIRTYPE, mode=0o700)
        _add_tar(tf, "./voc/Annotations/a.xml", b"<annotation/>", mode=0o777)
        _add_tar(tf, "./voc/JPEGImages/a.jpg", b"jpeg", mode=0o600)
    result = extract_archive(src, tmp_path / "out")
    assert result.kind == "tar"
    assert result.root == tmp_path / "out" / "voc"
    assert _files_under(result.root) == {
        "Annotations/a.xml": b"<annotation/>",
        "JPEGImages/a.jpg": b"jpeg",
    }


def test_extract_archive_archive_modes_ignored_fixed_modes(tmp_path: Path) -> None:
    src = tmp_path / "up.tar"
    with tarfile.open(src, "w") as tf:
        _add_tar(tf, "d", kind=tarfile.DIRTYPE, mode=0o777)
        _add_tar(tf, "d/run.sh", b"#!/bin/sh\n", mode=0o4777)
        _add_tar(tf, "d/secret.txt", b"x", mode=0o000)
    result = extract_archive(src, tmp_path / "out")
    assert stat.S_IMODE((result.root).stat().st_mode) == 0o755
    assert stat.S_IMODE((result.root / "run.sh").stat().st_mode) == 0o644
    assert stat.S_IMODE((result.root / "secret.txt").stat().st_mode) == 0o644


def test_extract_archive_junk_entries_skipped(tmp_path: Path) -> None:
    members = [
        *COCO_FILES,
        ("__MACOSX/._annotations", b"resource fork"),
        ("__MACOSX/images/._0001.jpg", b"resource fork"),
        ("images/.DS_Store", b"finder"),
        ("images/train/Thumbs.db", b"windows"),
        ("images/train/._0001.jpg", b"apple double"),
    ]
    src = _write_zip(tmp_path / "up.zip", [(f"set/{n}", d) for n, d in members])
    result = extract_archive(src, tmp_path / "out")
    # Without the junk the archive has a single top-level folder again.
    assert result.root == tmp_path / "out" / "set"
    assert result.files == 3
    assert _files_under(tmp_path / "out") == {f"set/{n}": d for n, d in COCO_FILES}


def test_extract_archive_two_top_level_folders_roots_at_dest(tmp_path: Path) -> None:
    src = _write_zip(tmp_path / "up.zip", [("a/x.txt", b"1"), ("b/y.txt", b"2")])
    assert extract_archive(src, tmp_path / "out").root == tmp_path / "out"


# --- content_hash ----------------------------------------------------------------------------


def test_content_hash_zip_and_targz_in_different_order_equal(tmp_path: Path) -> None:
    as_zip = _write_zip(tmp_path / "a.zip", [(f"wrap/{n}", d) for n, d in COCO_FILES])
    as_targz = _write_tar(tmp_path / "b.tar.gz", list(reversed(COCO_FILES)))
    root_zip = extract_archive(as_zip, tmp_path / "z").root
    root_tar = extract_archive(as_targz, tmp_path / "t").root
    os.utime(root_zip / COCO_FILES[1][0], (0, 0))  # timestamps do not matter
    assert content_hash(root_zip) == content_hash(root_tar)
    assert len(content_hash(root_zip)) == 64


def test_content_hash_one_byte_changed_differs(tmp_path: Path) -> None:
    changed = [*COCO_FILES[:-1], (COCO_FILES[-1][0], COCO_FILES[-1][1][:-1] + b"3")]
    root_a = extract_archive(_write_zip(tmp_path / "a.zip", COCO_FILES), tmp_path / "a").root
    root_b = extract_archive(_write_zip(tmp_path / "b.zip", changed), tmp_path / "b").root
    assert content_hash(root_a) != content_hash(root_b)


def test_content_hash_renamed_file_differs(tmp_path: Path) -> None:
    renamed = [*COCO_FILES[:-1], ("images/train/0003.jpg", COCO_FILES[-1][1])]
    root_a = extract_archive(_write_zip(tmp_path / "a.zip", COCO_FILES), tmp_path / "a").root
    root_b = extract_archive(_write_zip(tmp_path / "b.zip", renamed), tmp_path / "b").root
    assert content_hash(root_a) != content_hash(root_b)


def test_content_hash_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        content_hash(tmp_path / "nope")


# --- not an archive, corrupt archives --------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"", b"hello, this is not an archive" * 40, gzip.compress(b"plain text, not a tar" * 40)],
    ids=["empty-file", "text", "gzip-not-tar"],
)
def test_extract_archive_non_archive_bytes_rejected(tmp_path: Path, payload: bytes) -> None:
    src = tmp_path / "up.zip"
    src.write_bytes(payload)
    error = _extract_error(src, tmp_path / "out")
    assert "not a .zip or .tar.gz archive" in str(error)


def test_extract_archive_truncated_zip_raises_archive_error(tmp_path: Path) -> None:
    data = _write_zip(tmp_path / "ok.zip", COCO_FILES).read_bytes()
    src = tmp_path / "cut.zip"
    src.write_bytes(data[: len(data) // 2])
    assert "corrupt or truncated" in str(_extract_error(src, tmp_path / "out"))


def test_extract_archive_random_bytes_after_pk_header_raises_archive_error(tmp_path: Path) -> None:
    src = tmp_path / "up.zip"
    src.write_bytes(b"PK\x03\x04" + os.urandom(2000))
    assert "corrupt or truncated" in str(_extract_error(src, tmp_path / "out"))


def test_extract_archive_corrupt_zip_member_data_names_member(tmp_path: Path) -> None:
    src = _write_zip(tmp_path / "up.zip", [("a.txt", b"ok"), ("b.bin", os.urandom(4096))])
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo("b.bin")
    data = bytearray(src.read_bytes())
    start = info.header_offset + 30 + len(info.filename)  # fixed local header + name
    data[start + 100 : start + 200] = bytes(100)  # flip compressed bytes -> CRC/zlib error
    src.write_bytes(bytes(data))
    error = _extract_error(src, tmp_path / "out")
    assert error.member == "b.bin"
    assert "archive member 'b.bin'" in str(error)


def test_extract_archive_truncated_targz_raises_archive_error(tmp_path: Path) -> None:
    data = _write_tar(tmp_path / "ok.tar.gz", [("a.bin", os.urandom(64 * 1024))]).read_bytes()
    src = tmp_path / "cut.tar.gz"
    src.write_bytes(data[: len(data) // 2])
    assert "corrupt or truncated" in str(_extract_error(src, tmp_path / "out"))


def test_extract_archive_tar_cut_at_member_boundary_raises_archive_error(tmp_path: Path) -> None:
    # tarfile alone treats a missing header after the first member as a normal end.
    data = _write_tar(tmp_path / "ok.tar", COCO_FILES, mode="w").read_bytes()
    src = tmp_path / "cut.tar"
    src.write_bytes(data[: 512 + 512])  # first header + its (padded) data, nothing more
    assert "no tar header" in str(_extract_error(src, tmp_path / "out"))


# --- unsafe members --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_extract_archive_dotdot_member_rejected(tmp_path: Path, fmt: str) -> None:
    members = [("ok.txt", b"ok"), ("../evil.txt", b"evil")]
    if fmt == "zip":
        src = _write_zip(tmp_path / "up.zip", members)
    else:
        src = _write_tar(tmp_path / "up.tar.gz", members)
    error = _extract_error(src, tmp_path / "work" / "out")
    assert str(error) == "archive member '../evil.txt': path escapes the archive root"
    assert error.member == "../evil.txt"
    assert not (tmp_path / "work" / "evil.txt").exists()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("/etc/passwd", "absolute path"),
        ("C:/Windows/x.txt", "drive letter"),
        ("C:\\Windows\\x.txt", "drive letter"),
        ("\\\\server\\share\\x.txt", "absolute path"),
        ("images\\..\\..\\x.txt", "escapes the archive root"),
        ("a/../b.txt", "escapes the archive root"),
    ],
)
def test_extract_archive_unsafe_path_member_rejected(
    tmp_path: Path, name: str, problem: str
) -> None:
    src = _write_zip(tmp_path / "up.zip", [("ok.txt", b"ok"), (name, b"x")])
    error = _extract_error(src, tmp_path / "out")
    assert error.member == name
    assert problem in str(error)


def test_extract_archive_tar_absolute_member_rejected(tmp_path: Path) -> None:
    src = _write_tar(tmp_path / "up.tar.gz", [("/tmp/evil.txt", b"x")])
    assert "absolute path" in str(_extract_error(src, tmp_path / "out"))


def test_extract_archive_backslash_separators_become_directories(tmp_path: Path) -> None:
    src = _write_zip(tmp_path / "up.zip", [("set\\images\\a.jpg", b"a")])
    result = extract_archive(src, tmp_path / "out")
    assert _files_under(result.root) == {"images/a.jpg": b"a"}


def test_extract_archive_zip_symlink_member_rejected(tmp_path: Path) -> None:
    src = tmp_path / "up.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("ok.txt", b"ok")
        link = zipfile.ZipInfo("images")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc")
    error = _extract_error(src, tmp_path / "out")
    assert error.member == "images"
    assert "links are not allowed" in str(error)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE], ids=["symlink", "hardlink"])
def test_extract_archive_tar_link_member_rejected(tmp_path: Path, kind: bytes) -> None:
    src = tmp_path / "up.tar.gz"
    with tarfile.open(src, "w:gz") as tf:
        _add_tar(tf, "ok.txt", b"ok")
        _add_tar(tf, "images", kind=kind, linkname="/etc/passwd")
    error = _extract_error(src, tmp_path / "out")
    assert error.member == "images"
    assert "links are not allowed" in str(error)


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.FIFOTYPE], ids=["chardev", "fifo"])
def test_extract_archive_tar_device_member_rejected(tmp_path: Path, kind: bytes) -> None:
    src = tmp_path / "up.tar"
    with tarfile.open(src, "w") as tf:
        _add_tar(tf, "dev/zero", kind=kind)
    assert "device files" in str(_extract_error(src, tmp_path / "out"))


def test_extract_archive_duplicate_member_after_normalisation_rejected(tmp_path: Path) -> None:
    src = _write_tar(tmp_path / "up.tar.gz", [("a/b.txt", b"1"), ("./a//b.txt", b"2")])
    error = _extract_error(src, tmp_path / "out")
    assert error.member == "./a//b.txt"
    assert "duplicate" in str(error)


@pytest.mark.parametrize(
    "members",
    [[("a", b"file"), ("a/b.txt", b"x")], [("a/b.txt", b"x"), ("a", b"file")]],
    ids=["file-first", "dir-first"],
)
def test_extract_archive_file_and_dir_same_path_rejected(
    tmp_path: Path, members: list[tuple[str, bytes]]
) -> None:
    src = _write_tar(tmp_path / "up.tar.gz", members)
    error = _extract_error(src, tmp_path / "out")
    assert error.member == members[1][0]
    assert "a file" in str(error)


def test_extract_archive_encrypted_zip_member_rejected(tmp_path: Path) -> None:
    src = _write_zip(tmp_path / "up.zip", [("secret.txt", b"not really encrypted")])
    data = bytearray(src.read_bytes())  # zipfile cannot write encrypted members: set the flag
    data[data.index(b"PK\x03\x04") + 6] |= 0x1  # general purpose flags, local header
    data[data.index(b"PK\x01\x02") + 8] |= 0x1  # ... and central directory
    src.write_bytes(bytes(data))
    assert "encrypted" in str(_extract_error(src, tmp_path / "out"))


# --- limits ----------------------------------------------------------------------------------


def test_extract_archive_too_many_files_rejected(tmp_path: Path) -> None:
    src = _write_zip(tmp_path / "up.zip", [(f"img/{i}.jpg", b"x") for i in range(6)])
    error = _extract_error(src, tmp_path / "out", ArchiveLimits(max_files=5))
    assert "more than 5 files" in str(error)


def test_extract_archive_total_size_over_limit_rejected(tmp_path: Path) -> None:
    src = _write_tar(tmp_path / "up.tar.gz", [(f"img/{i}.jpg", bytes(400)) for i in range(3)])
    error = _extract_error(src, tmp_path / "out", ArchiveLimits(max_total_bytes=1000))
    assert "more than 1000 bytes" in str(error)


def test_extract_archive_member_over_limit_rejected(tmp_path: Path) -> None:
    src = _write_zip(tmp_path / "up.zip", [("small.txt", b"x"), ("big.bin", os.urandom(5000))])
    error = _extract_error(src, tmp_path / "out", ArchiveLimits(max_member_bytes=4096))
    assert error.member == "big.bin"
    assert "per-file limit 4096" in str(error)


def test_extract_archive_zip_lying_size_header_rejected(tmp_path: Path) -> None:
    src = _write_zip(tmp_path / "up.zip", [("big.bin", bytes(200_000))])
    data = bytearray(src.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 10)  # uncompressed size in the local header
    struct.pack_into("<I", data, central + 24, 10)  # ... and in the central directory
    src.write_bytes(bytes(data))
    with zipfile.ZipFile(src) as zf:
        assert zf.getinfo("big.bin").file_size == 10  # the header now lies
    error = _extract_error(src, tmp_path / "out", ArchiveLimits(max_member_bytes=1000))
    assert error.member == "big.bin"


def test_writer_stream_longer_than_declared_rejected(tmp_path: Path) -> None:
    plan = _Plan(ArchiveLimits(), archive_bytes=10_000)
    writer = _Writer(tmp_path)
    reader = io.BytesIO(bytes(5000))
    with pytest.raises(ArchiveError, match="its header declares 10") as info:
        writer.write_file(PurePosixPath("a.bin"), reader, name="a.bin", declared=10, plan=plan)
    assert info.value.member == "a.bin"


def test_writer_streamed_total_over_limit_rejected(tmp_path: Path) -> None:
    plan = _Plan(ArchiveLimits(max_total_bytes=3000), archive_bytes=10_000)
    writer = _Writer(tmp_path)
    writer.write_file(
        PurePosixPath("a"), io.BytesIO(bytes(2000)), name="a", declared=2000, plan=plan
    )
    with pytest.raises(ArchiveError, match="more than 3000 bytes"):
        writer.write_file(
            PurePosixPath("b"), io.BytesIO(bytes(2000)), name="b", declared=2000, plan=plan
        )


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_extract_archive_zip_bomb_ratio_rejected(tmp_path: Path, fmt: str) -> None:
    members = [("zeros.bin", bytes(16 * 1024**2))]
    if fmt == "zip":
        src = _write_zip(tmp_path / "bomb.zip", members)
    else:
        src = _write_tar(tmp_path / "bomb.tar.gz", members)
    error = _extract_error(src, tmp_path / "out", ArchiveLimits(max_ratio=100))
    assert "compression-ratio limit 100" in str(error)


# --- empty archives, dest handling -----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "tar.gz", "junk-only-zip", "dirs-only-tar"])
def test_extract_archive_no_regular_files_rejected(tmp_path: Path, fmt: str) -> None:
    if fmt == "zip":
        src = _write_zip(tmp_path / "up.zip", [])
    elif fmt == "tar.gz":
        src = _write_tar(tmp_path / "up.tar.gz", [])
    elif fmt == "junk-only-zip":
        src = _write_zip(tmp_path / "up.zip", [("__MACOSX/._x", b"x"), (".DS_Store", b"x")])
    else:
        src = tmp_path / "up.tar"
        with tarfile.open(src, "w") as tf:
            _add_tar(tf, "images", kind=tarfile.DIRTYPE)
    assert str(_extract_error(src, tmp_path / "out")) == "archive is empty"


def test_extract_archive_error_after_partial_write_leaves_existing_dest_empty(
    tmp_path: Path,
) -> None:
    # Tar members are checked in order: the good files are written before the bad one is seen.
    src = _write_tar(tmp_path / "up.tar.gz", [*COCO_FILES, ("images/../../evil.txt", b"x")])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="escapes"):
        extract_archive(src, dest)
    assert dest.is_dir()
    assert list(dest.iterdir()) == []


def test_extract_archive_non_empty_dest_raises_value_error(tmp_path: Path) -> None:
    src = _write_zip(tmp_path / "up.zip", COCO_FILES)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="empty or non-existent") as info:
        extract_archive(src, dest)
    assert not isinstance(info.value, ArchiveError)
    assert (dest / "keep.txt").read_text() == "mine"


def test_archive_limits_non_positive_raises() -> None:
    with pytest.raises(ValueError, match="max_ratio"):
        ArchiveLimits(max_ratio=0)
