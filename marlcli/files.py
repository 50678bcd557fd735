"""Writing a results file safely: all or nothing, with the user's umask, one line when it fails.

Below both the results tree (``marlcli.results``) and the checkpoints (``marlcli.checkpoints``),
which write through these functions; ``marlcli.results`` re-exports them for its callers.

Every file is written with the user's umask (issue 25: a shared cluster dir stays readable to
collaborators), and a write that fails (a full disk, a read-only or foreign-owned dir) raises
:class:`WriteError`, one line naming the file and the cause, and never leaves a torn file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from marlcli.errors import TrainingError


class WriteError(TrainingError):
    """A results file that could not be written (full disk, read-only or foreign-owned dir): one line."""


def describe(exc: BaseException) -> str:
    """An exception as one short line: its type and its message with whitespace collapsed."""
    text = " ".join(str(exc).split())
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:300]


def io_error(path: Path, exc: OSError) -> WriteError:
    """``cannot write <path>: no space left on device``: the file and the cause, in words."""
    if exc.errno is not None:
        why = os.strerror(exc.errno)
        why = why[:1].lower() + why[1:]
        name = errno.errorcode.get(exc.errno)
        why = f"{why} ({name})" if name else why
    else:
        why = describe(exc)
    return WriteError(f"cannot write {path}: {why}")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into a one-line :class:`WriteError`."""
    try:
        yield
    except OSError as exc:
        raise io_error(path, exc) from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write a temp file, fsync it, rename it over ``path``: a crash leaves the old or the new file."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """``write(f)`` into a temp file beside ``path``, fsync it, rename it over ``path``.

    The temp file is created with mode 0666 minus the umask, as ``open()`` would create ``path``.
    (``tempfile.mkstemp`` makes it 0600 whatever the umask, and the rename kept that mode: results
    on a shared dir were unreadable to collaborators; issue 25.) Any ``OSError`` (``ENOSPC``,
    ``EROFS``, ``EACCES``) removes the temp file, leaves ``path`` as it was, and is raised as a
    :class:`WriteError` naming ``path``.
    """
    with writing(path):
        tmp, fd = _create_temp(path)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def remove(p: Path) -> None:
    """Delete a file or a whole dir (a symlink itself, never its target); a failure is a :class:`WriteError`."""
    with writing(p):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def _create_temp(path: Path) -> tuple[Path, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where dirs cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
