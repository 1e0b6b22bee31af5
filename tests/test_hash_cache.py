"""`sha256_files` remembers each file's hash by (path, size, mtime, inode): a second export or eval
of the same 7B model reads none of its bytes, while a changed or replaced file is hashed again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantize.source import sha256_files


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _files(tmp_path: Path) -> list[Path]:
    files = [tmp_path / "model" / "config.json", tmp_path / "model" / "model.safetensors"]
    files[0].parent.mkdir()
    files[0].write_bytes(b'{"a": 1}')
    files[1].write_bytes(os.urandom(1 << 16))
    return files


def _overwrite_in_place(file: Path) -> None:
    """New bytes of the same length in the same inode, with the old mtime put back: only a hash
    that reads the file again can tell it changed."""
    stat = file.stat()
    with file.open("r+b") as handle:
        handle.write(os.urandom(stat.st_size))
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (file.stat().st_ino, file.stat().st_size) == (stat.st_ino, stat.st_size)


def _fresh_hash(files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The hash computed with an empty cache: every byte read."""
    with monkeypatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path / f"empty-{os.urandom(4).hex()}"))
        return sha256_files(files)


def test_second_call_reads_no_unchanged_file(
    cache_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(tmp_path)
    first = sha256_files(files)

    # Same path, size, mtime and inode: the remembered hash is used, the new bytes never read.
    _overwrite_in_place(files[1])
    assert sha256_files(files) == first
    assert _fresh_hash(files, tmp_path, monkeypatch) != first
    assert (cache_home / "bielik-quant" / "sha256.json").is_file()


def test_changed_or_replaced_file_is_hashed_again(
    cache_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(tmp_path)
    first = sha256_files(files)

    # New content and a new mtime (what an edit does), same size.
    stat = files[1].stat()
    files[1].write_bytes(os.urandom(stat.st_size))
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = sha256_files(files)
    assert second != first
    assert second == _fresh_hash(files, tmp_path, monkeypatch)

    # Replaced by another file (a new inode) with the same size and mtime.
    stat = files[1].stat()
    replacement = files[1].with_name("new.tmp")
    replacement.write_bytes(os.urandom(stat.st_size))
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, files[1])
    third = sha256_files(files)
    assert third not in (first, second)
    assert third == _fresh_hash(files, tmp_path, monkeypatch)


def test_hash_depends_on_names_order_and_content(cache_home: Path, tmp_path: Path) -> None:
    files = _files(tmp_path)
    renamed = files[0].with_name("other.json")
    renamed.write_bytes(files[0].read_bytes())
    assert sha256_files(files) != sha256_files(files[::-1])
    assert sha256_files(files) != sha256_files([renamed, files[1]])
    assert sha256_files([files[0]]) != sha256_files(files)


@pytest.mark.parametrize("garbage", [b"", b"{not json", b"[1, 2]", b'{"x": "y"}', b"\xff\xfe"])
def test_a_corrupt_cache_file_is_ignored_and_replaced(
    garbage: bytes, cache_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(tmp_path)
    expected = _fresh_hash(files, tmp_path, monkeypatch)
    (cache_home / "bielik-quant").mkdir(parents=True)
    (cache_home / "bielik-quant" / "sha256.json").write_bytes(garbage)
    assert sha256_files(files) == expected
    # The cache works again afterwards: an in-place change goes unread.
    _overwrite_in_place(files[1])
    assert sha256_files(files) == expected


def test_an_unwritable_cache_does_not_fail_the_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(tmp_path)
    expected = _fresh_hash(files, tmp_path, monkeypatch)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert sha256_files(files) == expected
