"""DirectoryFiles, the confined FileSource behind ``tftp=DIR``: symlinks inside DIR work, nothing outside
DIR can be reached (relative and absolute symlinks, loops, a symlink swapped in while names are being
resolved), only regular files open (a FIFO never blocks), error codes, no descriptor leaks."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmlan.io.tftp_files import DirectoryFiles, OpenFile
from vmlan.wire.tftp import ERR_ACCESS, ERR_NOT_FOUND, ERR_UNDEFINED

SECRET = b"outside DIR\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "file").write_bytes(b"0123456789")
    (root / "a" / "b" / "deep").write_bytes(b"deep")
    (tmp_path / "outside").write_bytes(SECRET)
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "file").write_bytes(SECRET)
    links = {
        "link": "file",
        "a/up": "../file",
        "a/b/up2": "../../file",
        "a/b/chain": "../../link",
        "dirlink": "a/b",
        "a/b/back-in": "../../../root/file",  # climbs out of DIR on its way: refused, even to come back
        "escape": "../outside",
        "a/escape2": "../../outside",
        "outdir": "../outdir",
        "abs-out": str(tmp_path / "outside"),
        "abs-in": str(root / "file"),  # absolute, even into DIR: refused (as RESOLVE_BENEATH does)
        "loop1": "loop2",
        "loop2": "loop1",
        "dangling": "nothing-here",
        "to-dir": "a",
        "dot": ".",
    }
    for name, target in links.items():
        (root / name).symlink_to(target)
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture
def files(tree: Path) -> Iterator[DirectoryFiles]:
    d = DirectoryFiles(tree)
    yield d
    d.close()


def read_all(h: OpenFile | int) -> bytes:
    assert isinstance(h, OpenFile), h
    try:
        return h.read(0, h.size + 10)
    finally:
        h.close()


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("file", b"0123456789"),
        ("a/b/deep", b"deep"),
        ("link", b"0123456789"),
        ("a/up", b"0123456789"),
        ("a/b/up2", b"0123456789"),
        ("a/b/chain", b"0123456789"),
        ("dirlink/deep", b"deep"),
        ("dirlink/up2", b"0123456789"),
        ("a/b/../../file", b"0123456789"),  # the engine refuses "..", the source resolves it safely anyway
        ("//a/./b//deep", b"deep"),
    ],
)
def test_served(files: DirectoryFiles, name: str, data: bytes) -> None:
    assert read_all(files.open(name)) == data


@pytest.mark.parametrize(
    ("name", "code", "why"),
    [
        ("escape", ERR_ACCESS, "above the directory"),
        ("a/escape2", ERR_ACCESS, "above the directory"),
        ("outdir/file", ERR_ACCESS, "above the directory"),
        ("a/b/back-in", ERR_ACCESS, "above the directory"),
        ("../outside", ERR_ACCESS, "above the directory"),
        ("a/../../outside", ERR_ACCESS, "above the directory"),
        ("abs-out", ERR_ACCESS, "absolute symlink"),
        ("abs-in", ERR_ACCESS, "absolute symlink"),
        ("loop1", ERR_ACCESS, "too many symlinks"),
        ("fifo", ERR_ACCESS, "not a regular file"),
        ("a", ERR_ACCESS, "not a regular file"),
        ("to-dir", ERR_ACCESS, "not a regular file"),
        ("dot", ERR_ACCESS, "not a regular file"),
        ("", ERR_ACCESS, "not a regular file"),
        ("missing", ERR_NOT_FOUND, "not found"),
        ("a/missing", ERR_NOT_FOUND, "not found"),
        ("dangling", ERR_NOT_FOUND, "not found"),
        ("file/x", ERR_NOT_FOUND, "not found"),
        ("link/x", ERR_NOT_FOUND, "not found"),
        ("x" * 300, ERR_NOT_FOUND, "not found"),
    ],
)
def test_refused(files: DirectoryFiles, name: str, code: int, why: str) -> None:
    assert files.open(name) == code
    assert files.refused == {why: 1}


def test_socket_file_refused(tree: Path, files: DirectoryFiles) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tree / "sock"))
        assert files.open("sock") in (ERR_ACCESS, ERR_UNDEFINED)  # ENXIO from open, or not regular
    finally:
        sock.close()


def test_reads_at_offsets_and_size_at_open(tree: Path, files: DirectoryFiles) -> None:
    h = files.open("file")
    assert isinstance(h, OpenFile) and h.size == 10
    assert h.read(3, 4) == b"3456" and h.read(8, 10) == b"89" and h.read(10, 5) == b"" and h.read(99, 1) == b""
    (tree / "file").write_bytes(b"changed and longer")
    assert h.size == 10  # the engine never reads past the size it was told
    h.close()
    h.close()  # idempotent


def test_root_may_be_a_symlink(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "root-link").symlink_to(tree)
    d = DirectoryFiles(tmp_path / "root-link")
    assert read_all(d.open("a/up")) == b"0123456789"
    assert d.open("escape") == ERR_ACCESS
    d.close()
    assert d.open("file") == ERR_UNDEFINED  # closed


def test_bad_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DirectoryFiles(tmp_path / "nope")
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        DirectoryFiles(tmp_path / "plain")


def test_os_errors_mapped(files: DirectoryFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def failing(code: int) -> object:
        def fake(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
            if path == "file":
                raise OSError(code, os.strerror(code))
            return real_open(path, flags, mode, dir_fd=dir_fd)

        return fake

    for code, expected in [(errno.EACCES, ERR_ACCESS), (errno.EPERM, ERR_ACCESS), (errno.EMFILE, ERR_UNDEFINED),
                           (errno.EIO, ERR_UNDEFINED), (errno.ENOENT, ERR_NOT_FOUND)]:
        monkeypatch.setattr(os, "open", failing(code))
        assert files.open("file") == expected
        assert files.open("a/up") == expected  # through a symlink, the same
    monkeypatch.undo()
    assert files.refused["permission denied"] == 4 and files.refused["EMFILE"] == 2


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_descriptor_leaks(files: DirectoryFiles) -> None:
    names = ["file", "a/b/deep", "dirlink/up2", "escape", "a/escape2", "loop1", "fifo", "a", "missing", "abs-in",
             "a/b/chain", "file/x"]
    before = open_fds()
    for _ in range(50):
        for name in names:
            h = files.open(name)
            if isinstance(h, OpenFile):
                h.close()
    assert open_fds() == before


def test_symlink_swapped_in_while_resolving(tree: Path, files: DirectoryFiles) -> None:
    """A component flips between a real directory and a symlink to outside DIR while names are resolved
    through it: every answer is the file inside, or a refusal, never the file outside (a realpath check
    followed by open() would serve it now and then)."""
    (tree / "flip").mkdir()
    (tree / "flip" / "file").write_bytes(b"inside")
    stop = threading.Event()

    def flipper() -> None:
        real, link, tmp = tree / "flip", tree / "flip-link", tree / "flip-tmp"
        link.symlink_to("../outdir")  # a relative link out of DIR
        while not stop.is_set():
            real.rename(tmp)
            os.rename(link, real)  # "flip" is now the symlink
            os.rename(real, link)
            tmp.rename(real)  # and the directory again

    thread = threading.Thread(target=flipper)
    thread.start()
    outcomes: set[bytes | int] = set()
    deadline = time.monotonic() + 30
    tries = 0
    try:
        # at least 3000 tries, and on until both states were met (the race was really run)
        while tries < 3000 or not {b"inside", ERR_ACCESS} <= outcomes:
            assert time.monotonic() < deadline, f"the flips were never seen: {outcomes}"
            h = files.open("flip/file")
            outcomes.add(read_all(h) if isinstance(h, OpenFile) else h)
            tries += 1
    finally:
        stop.set()
        thread.join()
    assert SECRET not in outcomes
    assert outcomes <= {b"inside", ERR_ACCESS, ERR_NOT_FOUND}
