"""Durable Part-10 storage: temporary file, fsync, rename, fsync of the directory.

File names are derived from a hash (never from UIDs a peer chose), so no received value can steer
where a file lands.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
from pathlib import Path

_serial = itertools.count()


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances = root / "instances"
        self.reports = root / "reports"
        self.tmp = root / "tmp"
        self.quarantined = root / "quarantine"
        for d in (self.instances, self.reports, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._make_buckets()
        self.clean_tmp()

    def _make_buckets(self) -> None:
        """All 256 instance folders up front (made durable once), so no store pays for a new folder."""
        missing = [self.instances / f"{i:02x}" for i in range(256) if not (self.instances / f"{i:02x}").is_dir()]
        for bucket in missing:
            bucket.mkdir(exist_ok=True)
        if missing:
            fsync_dir(self.instances)

    def clean_tmp(self) -> None:
        """Temporary files left by a crash were never acknowledged: they can go."""
        for leftover in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def instance_path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.instances / digest[:2] / f"{digest}.dcm"

    def instance_files(self) -> list[Path]:
        return sorted(self.instances.glob("??/*.dcm"))

    def report_path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.reports / f"{digest}.dcm"

    def open_tmp(self) -> tuple[int, Path]:
        """A new temporary file in the spool's file system, for an instance while it arrives."""
        tmp = self.tmp / f"rx-{os.getpid()}-{next(_serial)}.part"
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), tmp

    def commit(self, fd: int, tmp: Path, path: Path) -> None:
        """Make the open `tmp` durable as `path`: fsync the file, rename it, fsync the directory; closes `fd`.

        The fsync comes before the rename, so whatever name `path` points to is always a durable,
        complete file, also when two associations store the same instance at the same moment
        (each renames its own fsync'd copy over the other's, both identical).

        Raises:
            OSError: nothing of this store is left in tmp then. A failure of the final directory
                fsync leaves the (complete) file at `path` unindexed; the caller answers a failure
                status and `Ingest.recover_orphans` indexes it at the next start.
        """
        directory = path.parent
        new_dir = not directory.is_dir()  # the buckets are made at start; one removed since is made again
        commit_durably(fd, tmp, path, new_dir)

    def place(self, tmp: Path, path: Path) -> None:
        """Rename an already fsync'd, closed `tmp` to `path` and fsync the directory (see `commit`).

        Raises:
            OSError: tmp is removed then.
        """
        commit_durably(None, tmp, path, not path.parent.is_dir())

    def quarantine(self, path: Path) -> Path:
        """Move a spool file that cannot be trusted out of the way, keeping it for inspection."""
        self.quarantined.mkdir(parents=True, exist_ok=True)
        target = self.quarantined / path.name
        os.replace(path, target)
        fsync_dir(self.quarantined)
        return target

    def write(self, path: Path, chunks: list[bytes] | bytes) -> None:
        """Write durably; on any error nothing is left at `path` or in tmp.

        Raises:
            OSError: disk full, permissions; the caller maps it to a status.
        """
        write_durably(path, chunks, self.tmp)


def write_durably(path: Path, chunks: list[bytes] | bytes, tmp_dir: Path | None = None) -> None:
    """tmp file in `tmp_dir` (same file system), fsync, rename over `path`, fsync of its directory."""
    if isinstance(chunks, bytes | bytearray | memoryview):
        chunks = [bytes(chunks)]
    directory = path.parent
    new_dir = not directory.exists()
    if new_dir:
        directory.mkdir(parents=True, exist_ok=True)
    tmp_dir = tmp_dir or directory
    tmp = tmp_dir / f".{path.name}.{os.getpid()}.{id(chunks):x}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        for chunk in chunks:
            write_all(fd, chunk)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    commit_durably(fd, tmp, path, new_dir)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def commit_durably(fd: int | None, tmp: Path, path: Path, new_dir: bool) -> None:
    """fsync the open `tmp` and close it (`fd` None: that was done), rename it to `path` (making its folder
    if `new_dir`), fsync the folder (and its parent if new). On an error before the rename, tmp is removed."""
    directory = path.parent
    try:
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if new_dir:
            directory.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(directory)
    if new_dir:
        fsync_dir(directory.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
