"""The run directory: which directories are runs, one process at a time in each, and I/O failures in one line.

A *run directory* is one that holds the ``config.json`` a run writes at its start. A run may continue only in a
run directory (``train.resume`` must name one); a fresh run may start in an empty or missing directory, or in one
that holds no file a run would overwrite. Nothing outside a run's own files is ever deleted or truncated.

While a run trains, it holds an exclusive lock (``fcntl.flock``) on ``<run dir>/.iclwl.lock``. The operating system
releases it when the process ends, however it ends, so a crashed or killed run never leaves a stale lock; a second
process on the same directory is refused in one line and touches nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from data_gen import ConfigError

LOCK = ".iclwl.lock"
RUN_FILES = ("metrics.jsonl", "checkpoints", "summary.md", "curves.png", "provenance.json")  # a run would write these


class RunDirError(Exception):
    """The run directory is in use by another process; the message is one line."""


class RunIOError(Exception):
    """Writing the run's record failed (disk full, read-only, permission): one line naming the path and the cause.
    The newest checkpoint and metrics.jsonl stay readable; a rerun once the cause is fixed resumes from them."""


def is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def check_target(path: Path, resume: bool) -> None:
    """Refuse, before any file is touched, a directory a run may not use."""
    if resume:
        if not path.is_dir():
            raise ConfigError("train.resume", str(path), "must be an existing run directory; there is none there")
        if not is_run_dir(path):
            raise ConfigError("train.resume", str(path), "must be a run directory (one holding config.json); "
                              "this one is not a run's")  # fmt: skip
        return
    if path.is_dir() and not is_run_dir(path):
        foreign = [name for name in RUN_FILES if (path / name).exists()]
        if foreign:
            raise ConfigError("output dir", str(path), f"holds {', '.join(foreign)} but no config.json: not a run's "
                              "files, which a run would overwrite; choose another directory")  # fmt: skip


def prepare(path: Path) -> None:
    """Make the directory and check that the run can write there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        writable, why = os.access(path, os.W_OK), "permission denied"
    except OSError as e:
        writable, why = False, e.strerror
    if not writable:
        raise ConfigError("output dir", str(path), f"must be writable ({why})")


@contextlib.contextmanager
def owned(path: Path) -> Iterator[None]:
    """Hold the run directory's lock for the duration; refuse if another process holds it."""
    lock_path = path / LOCK
    with writing(lock_path):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirError(f"{path}: in use by another process (pid {holder}); one run directory, one process "
                              "at a time") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into a RunIOError naming the path and the cause."""
    try:
        yield
    except OSError as e:
        where = e.filename or path
        raise RunIOError(f"{where}: {e.strerror or e}") from None
