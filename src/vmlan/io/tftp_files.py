"""The files behind ``tftp=DIR``: a :class:`vmlan.engines.tftp.FileSource` confined to one directory.

Confinement is done the way the kernel's ``openat2(RESOLVE_BENEATH)`` does it, in user space (Python
has no ``openat2``): the directory is opened once, and every name is resolved one component at a time
with ``openat`` relative to the descriptor of the directory reached so far, ``O_NOFOLLOW`` at every
step.  A symbolic link met on the way is read (``readlinkat``) and its target resolved the same way,
components pushed in front of what is left of the name; ``..`` (only symlink targets can hold one: the
engine refuses it in names) goes back to the descriptor of the parent already held, never through the
filesystem, and going above the directory is refused.  So symlinks that stay inside DIR work (PXE trees
use them: ``pxelinux.cfg/01-<mac> -> default``), and nothing outside DIR can be reached:

* a symlink whose target is absolute is refused, even one that happens to point into DIR
  (``RESOLVE_BENEATH`` does the same: an absolute target's meaning depends on where DIR is mounted);
* a relative target that climbs out of DIR is refused;
* more than 40 symlinks in one name (the kernel's MAXSYMLINKS) is refused.

Why not ``realpath`` + ``commonpath``: the check and the ``open`` are two lookups of the same path,
and a symlink swapped in between escapes (TOCTOU).  Here nothing is looked up twice: each ``openat``
with ``O_NOFOLLOW`` either returns the directory or file that was there or fails, and a link read by
``readlinkat`` is resolved by the same rules, so a concurrent rename can make a lookup fail or find
another file inside DIR, never one outside.  (A directory moved out of DIR *while* a name is being
resolved through it is followed, as with ``openat2``; only the host's own users can do that, guests
cannot write.)  Hard links are indistinguishable from the file itself and are served.

The file itself is opened ``O_RDONLY | O_NOFOLLOW | O_NONBLOCK`` (a FIFO would otherwise block the
event loop in ``open``) and refused unless ``fstat`` says it is a regular file: no directories, devices,
FIFOs or sockets.  Reads are ``pread`` at the offset asked, so retransmissions never depend on a file
position.  The size is the one ``fstat`` gave at open; the engine never reads past it.

Error codes (TFTP's): a name that does not exist (``ENOENT``, ``ENOTDIR``, ``ENAMETOOLONG``) is 1,
File not found; everything refused by the rules above, or by the host's permissions (``EACCES``,
``EPERM``), is 2, Access violation: the file may exist, the guest may not have it.  Other errors
(``EMFILE``...) are 0.  :attr:`DirectoryFiles.refused` counts the reasons.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter

from vmlan.wire.tftp import ERR_ACCESS, ERR_NOT_FOUND, ERR_UNDEFINED

__all__ = ["DirectoryFiles", "OpenFile"]

#: Linux's MAXSYMLINKS (fs/namei.c): links followed while resolving one name.
MAX_SYMLINKS = 40

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_NOT_FOUND = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG})
_DENIED = frozenset({errno.EACCES, errno.EPERM})


class OpenFile:
    """A regular file open for reading (a :class:`vmlan.engines.tftp.FileHandle`)."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def read(self, offset: int, n: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class DirectoryFiles:
    """Read-only access to the files under ``root``; ``close()`` releases the directory."""

    __slots__ = ("_root", "refused", "root")

    def __init__(self, root: str | os.PathLike[str]) -> None:
        """Raises OSError when ``root`` cannot be opened as a directory."""
        self.root = os.fspath(root)
        self._root = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)  # DIR itself may be a symlink
        self.refused: Counter[str] = Counter()

    def close(self) -> None:
        if self._root >= 0:
            fd, self._root = self._root, -1
            os.close(fd)

    def open(self, name: str) -> OpenFile | int:
        """``name``: relative, ``/``-separated (the engine's normalised form; anything else is resolved
        by the same rules, so it is safe too)."""
        if self._root < 0:
            return self._refuse("closed", ERR_UNDEFINED)
        todo = [p for p in reversed(name.split("/")) if p not in ("", ".")]
        dirs = [self._root]  # dirs[-1]: the directory reached; the others lead back up to the root
        links = 0
        try:
            while todo:
                part = todo.pop()
                if part == "..":
                    if len(dirs) == 1:
                        return self._refuse("above the directory", ERR_ACCESS)
                    os.close(dirs.pop())
                    continue
                last = not todo
                try:
                    if last:
                        return self._open_file(part, dirs[-1])
                    dirs.append(os.open(part, _DIR_FLAGS, dir_fd=dirs[-1]))
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        return self._oserror(exc)
                # Not a directory (or not a file), or a symlink: only the latter goes on.
                try:
                    target = os.readlink(part, dir_fd=dirs[-1])
                except OSError as exc:
                    return self._oserror(exc if exc.errno != errno.EINVAL else OSError(errno.ENOTDIR, "not a dir"))
                links += 1
                if links > MAX_SYMLINKS:
                    return self._refuse("too many symlinks", ERR_ACCESS)
                if target.startswith("/"):
                    return self._refuse("absolute symlink", ERR_ACCESS)
                todo.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
            return self._refuse("not a regular file", ERR_ACCESS)  # the name ended on a directory
        finally:
            for fd in dirs[1:]:
                os.close(fd)

    def _open_file(self, part: str, dir_fd: int) -> OpenFile | int:
        fd = os.open(part, _FILE_FLAGS, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return self._refuse("not a regular file", ERR_ACCESS)
        return OpenFile(fd, st.st_size)

    def _oserror(self, exc: OSError) -> int:
        if exc.errno in _NOT_FOUND:
            return self._refuse("not found", ERR_NOT_FOUND)
        if exc.errno in _DENIED:
            return self._refuse("permission denied", ERR_ACCESS)
        return self._refuse(errno.errorcode.get(exc.errno or 0, "error"), ERR_UNDEFINED)

    def _refuse(self, why: str, code: int) -> int:
        self.refused[why] += 1
        return code
