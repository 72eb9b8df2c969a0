"""From received bytes to a durable, indexed instance — or a RejectedInstance with its reason."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import sqlite3
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pydicom

from edge_ai.domain import InstanceRef, uid_problem
from edge_ai.errors import Refusal, RejectedInstance
from edge_ai.spool.db import Database
from edge_ai.spool.header import ImageRecord, ImageRow, cut_short, fast_header, image_record, meta_transfer_syntax
from edge_ai.spool.index import InstanceIndex
from edge_ai.spool.store import Spool, write_all

_HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "PatientID"]
_GEOMETRY_TAGS = ["Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated"]
DEFAULT_MAX_INSTANCE_BYTES = 1024**3  # as config storage.max_instance_bytes


@dataclass(frozen=True)
class StoreOutcome:
    duplicate: bool  # same SOP Instance UID and bytes already stored
    conflict: bool  # same SOP Instance UID, different content: kept as a new version
    job_id: int  # the series' open job (0: a duplicate of a series already reported)
    reopened: bool  # the series already had a result; this opened a new generation


@dataclass(frozen=True)
class Stored:
    ref: InstanceRef
    modality: str
    outcome: StoreOutcome
    patient_id: str = ""  # for the audit's IHE ATNA participant object (PS3.15 A.5.3.4); never a name


class _Attached(Protocol):
    @property
    def job_id(self) -> int: ...
    @property
    def reopened(self) -> bool: ...


class Jobs(Protocol):
    """The job store as ingest sees it (edge_ai.grouping.jobs.JobStore)."""

    def attach(self, tx: sqlite3.Connection, series_id: int, series_uid: str) -> _Attached:
        """A new instance of the series joins its open job or opens the next generation."""

    def open_job(self, series_id: int) -> int | None:
        """The series' job still receiving or ready, if any."""


Carried = Callable[[str, int], None]  # (carrier id, job id): grouping's note that a series is arriving


class Ingest:
    def __init__(self, spool: Spool, db: Database, index: InstanceIndex, jobs: Jobs, min_free_bytes: int,
                 max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
                 carried: Carried = lambda carrier, job: None) -> None:
        self.spool = spool
        self.db = db
        self.index = index
        self.jobs = jobs
        self.carried = carried
        self.min_free_bytes = min_free_bytes
        self.max_instance_bytes = max_instance_bytes

    def add(self, ref: InstanceRef, modality: str, carrier: str,
            image: ImageRecord | ImageRow | None = None) -> StoreOutcome:
        """Index a durable file and attach it to its series' job, in one transaction; grouping hears
        which carrier brought it before the commit, so it can never judge the series whole in between.

        Raises:
            sqlite3.Error: the index could not be written.
        """
        with self.db.tx() as tx:
            indexed = self.index.add(tx, ref, modality, image)
            if indexed.duplicate:
                return StoreOutcome(True, False, self.jobs.open_job(indexed.series_id) or 0, False)
            attached = self.jobs.attach(tx, indexed.series_id, ref.series_instance_uid)
            self.carried(carrier, attached.job_id)
        return StoreOutcome(False, indexed.conflict, attached.job_id, attached.reopened)

    def store(self, part10: bytes, dataset_bytes: bytes, context_sop_class: str, assoc: str) -> Stored:
        """Store one instance held in memory (the streaming path is `receive`).

        Args:
            part10: the file to keep (preamble, file meta, data set exactly as received).
            dataset_bytes: its data set alone (the tail of `part10`), hashed to recognise a resend.
            context_sop_class: the abstract syntax of the presentation context it came on.
            assoc: an identifier of the association, for series grouping.

        Raises:
            RejectedInstance: with the kind of refusal and its reason.
        """
        receiving = self.receive(part10[:len(part10) - len(dataset_bytes)], context_sop_class, assoc)
        receiving.write(memoryview(dataset_bytes))
        return receiving.finish()

    def receive(self, prefix: bytes, context_sop_class: str, assoc: str,
                sop_instance_uid: str | None = None) -> Receiving:
        """Start receiving one instance: `prefix` (preamble and file meta) now, the data set as it arrives.
        `sop_instance_uid`, the request's Affected SOP Instance UID, must then be the data set's."""
        return Receiving(self, prefix, context_sop_class, assoc, sop_instance_uid)

    def recover_orphans(self) -> list[str]:
        """Index every spool file the index lacks; returns the problems with files that cannot be.

        The index commits without fsync (WAL, synchronous=NORMAL); the instance files are fsync'd
        with their directory before Success. A power cut can therefore roll back the index's
        last rows but never an acknowledged file: this puts them back at start, before the port
        opens. A file whose content does not match its hashed name (damaged since it was stored)
        is moved to the spool's quarantine folder and reported, never indexed.
        """
        known = self.index.instance_paths()
        problems = []
        for path in self.spool.instance_files():
            if str(path) in known:
                continue
            try:
                part10 = path.read_bytes()
                header = parse_header(part10)
                uids, image = inspect(part10, str(header.get("SOPClassUID", "")), self.max_instance_bytes)
                digest = hashlib.sha256(part10[dataset_offset(part10):]).hexdigest()
                if self.spool.instance_path(f"{uids['SOPInstanceUID']}|{digest}") != path:
                    raise RejectedInstance(Refusal.CANNOT_UNDERSTAND, "content does not match its name")
            except (RejectedInstance, OSError, ValueError) as exc:
                try:
                    moved = f"moved to {self.spool.quarantine(path)}"
                except OSError as move:
                    moved = f"left in place ({move.strerror})"
                problems.append(f"{path.name}: {exc}; {moved}")
                continue
            if self.index.is_purged(uids["SOPInstanceUID"], digest):
                with contextlib.suppress(OSError):  # retention's delete that a crash undid
                    path.unlink()
                continue
            ref = InstanceRef(uids["SOPClassUID"], uids["SOPInstanceUID"], uids["SeriesInstanceUID"],
                              uids["StudyInstanceUID"], str(path), digest, len(part10))
            self.add(ref, uids["Modality"][:16], "recovered", image)
        return problems


class Receiving:
    """One instance on its way in: written to a temporary spool file and hashed fragment by fragment, so
    memory stays flat whatever its size. `finish` decides (header checks, duplicate, space), makes it
    durable (fsync, rename, fsync of the directory) and indexes it; a refusal found on the way (no
    space, too large) is remembered, the rest of the data set is read and dropped, and `finish` raises it.
    """

    def __init__(self, ingest: Ingest, prefix: bytes, context_sop_class: str, assoc: str,
                 sop_instance_uid: str | None = None) -> None:
        self.ingest = ingest
        self.expected_uid = sop_instance_uid
        self.context_sop_class = context_sop_class
        self.assoc = assoc
        self.refusal: RejectedInstance | None = None
        self._hash = hashlib.sha256()
        self._received = 0
        self._size = len(prefix)
        self._fd: int | None = None
        self._tmp: Path | None = None
        spool = ingest.spool
        try:
            free = spool.free_bytes()
        except OSError as exc:
            self.refusal = RejectedInstance(Refusal.OUT_OF_RESOURCES, f"spool unavailable: {exc.strerror}")
            return
        if free < ingest.min_free_bytes:
            self.refusal = RejectedInstance(Refusal.OUT_OF_RESOURCES,
                                            f"free space {free} below storage.min_free_bytes")
            return
        try:
            self._fd, self._tmp = spool.open_tmp()
            write_all(self._fd, prefix)
        except OSError as exc:
            self._refuse_io(exc)

    def _refuse_io(self, exc: OSError) -> None:
        reason = "disk full" if exc.errno == errno.ENOSPC else f"spool unwritable: {exc.strerror}"
        self.refusal = RejectedInstance(Refusal.OUT_OF_RESOURCES, reason)
        self.discard()

    def write(self, fragment: memoryview) -> None:
        if self.refusal is not None:
            return
        self._received += len(fragment)
        if self._received > self.ingest.max_instance_bytes:
            self.refusal = RejectedInstance(
                Refusal.CANNOT_UNDERSTAND,
                f"data set larger than storage.max_instance_bytes ({self.ingest.max_instance_bytes})")
            self.discard()
            return
        self._hash.update(fragment)
        assert self._fd is not None
        try:
            write_all(self._fd, fragment)
        except OSError as exc:
            self._refuse_io(exc)
            return
        self._size += len(fragment)

    def discard(self) -> None:
        """Close and remove the temporary file (an unacknowledged instance leaves nothing)."""
        fd, tmp, self._fd, self._tmp = self._fd, self._tmp, None, None
        _forget(fd, tmp)

    def finish(self) -> Stored:
        """Raises: RejectedInstance; nothing is left behind then."""
        try:
            return self._prepare().release()
        except BaseException:
            self.discard()
            raise

    def hold(self) -> Held:
        """Check the instance and fsync its file, but leave it out of the spool and the index until
        `Held.release` (an HTTP request's instances are kept only if the whole request is).

        Raises: RejectedInstance; nothing is left behind then.
        """
        try:
            held = self._prepare()
            if isinstance(held.image, ImageRecord):
                held.image = held.image.row()  # kept until the request ends: compact
            if held.fd is not None:  # durable now; closed, so a request of thousands holds no descriptors
                fd, held.fd = held.fd, None
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            self.discard()
            reason = "disk full" if exc.errno == errno.ENOSPC else f"spool unwritable: {exc.strerror}"
            raise RejectedInstance(Refusal.OUT_OF_RESOURCES, reason) from exc
        except BaseException:
            self.discard()
            raise
        return held

    def _prepare(self) -> Held:
        if self.refusal is not None:
            raise self.refusal
        assert self._tmp is not None and self._fd is not None
        ingest = self.ingest
        uids, image = inspect(self._tmp, self.context_sop_class, ingest.max_instance_bytes)
        if self.expected_uid is not None and uids["SOPInstanceUID"] != self.expected_uid:
            raise RejectedInstance(Refusal.DATASET_MISMATCH, "data set SOP Instance UID differs from the "
                                   "request's Affected SOP Instance UID")
        digest = self._hash.hexdigest()
        path = ingest.spool.instance_path(f"{uids['SOPInstanceUID']}|{digest}")
        ref = InstanceRef(
            sop_class_uid=uids["SOPClassUID"],
            sop_instance_uid=uids["SOPInstanceUID"],
            series_instance_uid=uids["SeriesInstanceUID"],
            study_instance_uid=uids["StudyInstanceUID"],
            path=str(path),
            sha256=digest,
            size=self._size,
        )
        held = Held(ingest, self.assoc, ref, uids["Modality"][:16], image, uids["PatientID"][:64])
        if ingest.index.has_instance(ref.sop_instance_uid, digest):
            self.discard()
        else:
            held.fd, held.tmp, self._fd, self._tmp = self._fd, self._tmp, None, None
        return held


@dataclass(slots=True)
class Held:
    """A checked instance whose bytes are in the spool's tmp folder: `release` makes it durable in the
    spool and indexes it, `drop` forgets it (it was never acknowledged)."""

    ingest: Ingest
    carrier: str
    ref: InstanceRef
    modality: str
    image: Any
    patient_id: str
    fd: int | None = None  # open until released, unless `Receiving.hold` fsync'd and closed it
    tmp: Path | None = None  # None: a duplicate, no file of its own

    def release(self) -> Stored:
        """Raises: RejectedInstance (no space, spool or index unwritable); nothing is left in tmp then."""
        ingest, spool = self.ingest, self.ingest.spool
        if self.tmp is not None:
            fd, tmp, self.fd, self.tmp = self.fd, self.tmp, None, None
            try:
                if spool.free_bytes() < ingest.min_free_bytes:
                    if fd is not None:
                        os.close(fd)
                    tmp.unlink(missing_ok=True)
                    raise RejectedInstance(Refusal.OUT_OF_RESOURCES, "free space below storage.min_free_bytes")
                if fd is None:
                    spool.place(tmp, Path(self.ref.path))
                else:
                    spool.commit(fd, tmp, Path(self.ref.path))
            except OSError as exc:
                reason = "disk full" if exc.errno == errno.ENOSPC else f"spool unwritable: {exc.strerror}"
                raise RejectedInstance(Refusal.OUT_OF_RESOURCES, reason) from exc
        try:
            outcome = ingest.add(self.ref, self.modality, self.carrier, self.image)
        except sqlite3.Error as exc:
            raise RejectedInstance(Refusal.OUT_OF_RESOURCES, f"spool index unavailable: {exc}") from exc
        return Stored(self.ref, self.modality, outcome, self.patient_id)

    def drop(self) -> None:
        fd, tmp, self.fd, self.tmp = self.fd, self.tmp, None, None
        _forget(fd, tmp)


def _forget(fd: int | None, tmp: Path | None) -> None:
    """Close and remove an instance's temporary file: it was never acknowledged."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink()


def dataset_offset(part10: bytes) -> int:
    """Where the data set starts in a Part-10 file: preamble, 'DICM', then the file meta group,
    whose first element (0002,0000) gives its length.

    Raises:
        ValueError: not a Part-10 file with a group length.
    """
    if part10[128:132] != b"DICM" or part10[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not a Part-10 file with File Meta Information Group Length first")
    return 144 + int.from_bytes(part10[140:144], "little")


def examine(part10: bytes | Path, context_sop_class: str, max_instance_bytes: int) -> dict[str, str]:
    """Everything decided from the received bytes alone (no disk): the identifying UIDs, or why not.

    Raises:
        RejectedInstance: 0xC000 unparseable, bad UIDs or a decoded size above `max_instance_bytes`;
            0xA900 when the data set's SOP class is not the presentation context's.
    """
    return inspect(part10, context_sop_class, max_instance_bytes)[0]


def inspect(part10: bytes | Path, context_sop_class: str,
            max_instance_bytes: int) -> tuple[dict[str, str], ImageRecord | None]:
    """`examine`, and the image record the same header read gives (None: the fast path could not read
    it, and the worker reads the header itself).

    Raises:
        RejectedInstance: as `examine`.
    """
    probe = _probe(part10)
    _check_inflated_size(part10, probe, max_instance_bytes)
    header = parse_header(part10, probe)
    _check_whole(part10, probe)
    # a value of the wrong type (a sequence where a UID belongs) counts as missing; never str() it
    uids = {k: v if isinstance(v := header.get(k, ""), str) else "" for k in _HEADER_TAGS}
    for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        problem = uid_problem(uids[key])
        if problem is not None:
            raise RejectedInstance(Refusal.CANNOT_UNDERSTAND, f"{key} {problem}")
    if uids["SOPClassUID"] != context_sop_class:
        raise RejectedInstance(
            Refusal.DATASET_MISMATCH,
            f"data set SOP class {uids['SOPClassUID']} differs from the presentation context "
            f"{context_sop_class}",
        )
    decoded = decoded_size(header)
    if decoded > max_instance_bytes:
        raise RejectedInstance(
            Refusal.CANNOT_UNDERSTAND,
            f"decoded pixel data would be {decoded} bytes, above storage.max_instance_bytes "
            f"({max_instance_bytes})",
        )
    image = None
    if isinstance(header, dict):  # the fast path read it: its record is exact
        syntax = meta_transfer_syntax(probe) or ""
        image = image_record(header, 144 + int.from_bytes(probe[140:144], "little"), syntax)
    return uids, image


def _check_whole(part10: bytes | Path, probe: bytes) -> None:
    """Refuse a data set whose last element declares more bytes than follow (a transfer cut short):
    acknowledging it would tell the modality it is archived when it cannot be read.

    Raises:
        RejectedInstance: 0xC000, naming the element.
    """
    ts = meta_transfer_syntax(probe)
    if ts is None or len(probe) < 144:
        return
    start = 144 + int.from_bytes(probe[140:144], "little")
    if isinstance(part10, Path):
        with part10.open("rb") as f:
            why = cut_short(f, start, part10.stat().st_size, ts)
    else:
        why = cut_short(part10, start, len(part10), ts)
    if why is not None:
        raise RejectedInstance(Refusal.CANNOT_UNDERSTAND, why)


DEFLATED = "1.2.840.10008.1.2.1.99"
_CHUNK = 1 << 20


def _check_inflated_size(part10: bytes | Path, probe: bytes, max_instance_bytes: int) -> None:
    """A deflated data set is inflated once, in bounded steps and without keeping the output, so that a
    few kilobytes claiming gigabytes (a deflate bomb) are refused here instead of exhausting memory in
    the header read or in the worker.

    Raises:
        RejectedInstance: 0xC000 when it inflates past `max_instance_bytes` or does not inflate.
    """
    if meta_transfer_syntax(probe) != DEFLATED or len(probe) < 144:
        return
    offset = 144 + int.from_bytes(probe[140:144], "little")
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # PS3.5 A.5: raw deflate, no zlib header
    total = 0
    try:
        for chunk in _chunks(part10, offset):
            data = inflater.decompress(chunk, _CHUNK)
            total += len(data)
            while inflater.unconsumed_tail and total <= max_instance_bytes:
                total += len(inflater.decompress(inflater.unconsumed_tail, _CHUNK))
            if total > max_instance_bytes:
                break
        while total <= max_instance_bytes:  # output zlib still holds after the last input
            out = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
            if not out:
                break
            total += len(out)
    except zlib.error as exc:
        raise RejectedInstance(Refusal.CANNOT_UNDERSTAND, "deflated data set does not inflate") from exc
    if total > max_instance_bytes:
        raise RejectedInstance(Refusal.CANNOT_UNDERSTAND, "deflated data set inflates past "
                               f"storage.max_instance_bytes ({max_instance_bytes})")
    if not inflater.eof:
        raise RejectedInstance(Refusal.CANNOT_UNDERSTAND, "deflated data set is cut off")


def _chunks(part10: bytes | Path, offset: int) -> Iterator[bytes]:
    if isinstance(part10, Path):
        with part10.open("rb") as f:
            f.seek(offset)
            while chunk := f.read(_CHUNK):
                yield chunk
    else:
        for i in range(offset, len(part10), _CHUNK):
            yield part10[i:i + _CHUNK]


_PROBE = 65536  # a header this long is read from the file for the fast path; longer ones go to pydicom


def _probe(part10: bytes | Path) -> bytes:
    """The start of a file (up to one byte past `_PROBE`, so a caller can tell it was cut), or the bytes."""
    if isinstance(part10, Path):
        with part10.open("rb") as f:
            return f.read(_PROBE + 1)
    return part10


def parse_header(part10: bytes | Path, probe: bytes | None = None) -> Mapping[str, Any] | pydicom.Dataset:
    """Read the identifying attributes only; pixel data stays as received. `probe` is `_probe(part10)`
    where the caller has it already.

    Raises:
        RejectedInstance: 0xC000 when the bytes are not a DICOM data set.
    """
    if probe is None:
        probe = _probe(part10)
    complete = not isinstance(part10, Path) or len(probe) <= _PROBE
    ts = meta_transfer_syntax(probe)
    if ts is not None and len(probe) >= 144:
        fast = fast_header(memoryview(probe)[144 + int.from_bytes(probe[140:144], "little"):], ts, complete)
        if fast is not None:
            return fast
    try:
        tags = _HEADER_TAGS + _GEOMETRY_TAGS
        source = str(part10) if isinstance(part10, Path) else io.BytesIO(part10)
        ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=tags)
        for key in tags:
            ds.get(key)  # force decoding of each element now, inside this try
    except Exception as exc:  # untrusted bytes: any parser failure means "cannot understand"
        reason = f"not a parseable DICOM data set: {type(exc).__name__}"
        raise RejectedInstance(Refusal.CANNOT_UNDERSTAND, reason) from exc
    return ds



def decoded_size(header: Mapping[str, Any] | pydicom.Dataset) -> int:
    """Rows x Columns x Frames x SamplesPerPixel x BitsAllocated/8, from the header alone (0 without pixels).

    Raises:
        RejectedInstance: 0xC000 when a geometry attribute is not a usable number.
    """
    if "Rows" not in header and "Columns" not in header:
        return 0
    try:
        rows = int(header.get("Rows") or 0)
        cols = int(header.get("Columns") or 0)
        frames = int(header.get("NumberOfFrames") or 1)
        samples = int(header.get("SamplesPerPixel") or 1)
        bits = int(header.get("BitsAllocated") or 8)
    except (TypeError, ValueError, OverflowError) as exc:
        reason = f"image geometry is not numeric: {type(exc).__name__}"
        raise RejectedInstance(Refusal.CANNOT_UNDERSTAND, reason) from exc
    if min(rows, cols, frames, samples, bits) < 0:
        raise RejectedInstance(Refusal.CANNOT_UNDERSTAND, "image geometry has a negative value")
    return rows * cols * frames * samples * ((bits + 7) // 8)
