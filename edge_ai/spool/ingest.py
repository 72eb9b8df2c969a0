"""From received bytes to a durable, indexed instance — or a RejectedInstance with its status."""

from __future__ import annotations

import errno
import hashlib
import io
import re
import sqlite3
from dataclasses import dataclass

import pydicom

from edge_ai.dicom import status
from edge_ai.domain import InstanceRef
from edge_ai.errors import RejectedInstance
from edge_ai.spool.queue import Queue, StoreOutcome
from edge_ai.spool.store import Spool

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"]
_GEOMETRY_TAGS = ["Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated"]
DEFAULT_MAX_INSTANCE_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class Stored:
    ref: InstanceRef
    modality: str
    outcome: StoreOutcome


class Ingest:
    def __init__(self, spool: Spool, queue: Queue, min_free_bytes: int,
                 max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES) -> None:
        self.spool = spool
        self.queue = queue
        self.min_free_bytes = min_free_bytes
        self.max_instance_bytes = max_instance_bytes

    def store(self, part10: bytes, dataset_bytes: bytes, context_sop_class: str, assoc: str) -> Stored:
        """Store one received instance durably and index it.

        Args:
            part10: the file to keep (preamble, file meta, data set exactly as received).
            dataset_bytes: the data set alone, hashed to recognise a resend of the same content.
            context_sop_class: the abstract syntax of the presentation context it came on.
            assoc: an identifier of the association, for series grouping.

        Raises:
            RejectedInstance: with the DIMSE status to answer.
        """
        try:
            free = self.spool.free_bytes()
        except OSError as exc:
            raise RejectedInstance(status.OUT_OF_RESOURCES, f"spool unavailable: {exc.strerror}") from exc
        if free < self.min_free_bytes + len(part10):
            raise RejectedInstance(status.OUT_OF_RESOURCES, f"free space {free} below storage.min_free_bytes")
        uids = examine(part10, context_sop_class, self.max_instance_bytes)
        digest = hashlib.sha256(dataset_bytes).hexdigest()
        path = self.spool.instance_path(f"{uids['SOPInstanceUID']}|{digest}")
        ref = InstanceRef(
            sop_class_uid=uids["SOPClassUID"],
            sop_instance_uid=uids["SOPInstanceUID"],
            series_instance_uid=uids["SeriesInstanceUID"],
            study_instance_uid=uids["StudyInstanceUID"],
            path=str(path),
            sha256=digest,
            size=len(part10),
        )
        modality = uids["Modality"][:16]
        if not self.queue.has_instance(ref.sop_instance_uid, digest):
            try:
                self.spool.write(path, part10)
            except OSError as exc:
                reason = "disk full" if exc.errno == errno.ENOSPC else f"spool unwritable: {exc.strerror}"
                raise RejectedInstance(status.OUT_OF_RESOURCES, reason) from exc
        try:
            outcome = self.queue.add_instance(ref, modality, assoc)
        except sqlite3.Error as exc:
            raise RejectedInstance(status.OUT_OF_RESOURCES, f"spool index unavailable: {exc}") from exc
        return Stored(ref, modality, outcome)

    def recover_orphans(self) -> list[str]:
        """Index every spool file the index lacks; returns the problems with files that cannot be.

        The index commits without fsync (WAL, synchronous=NORMAL); the instance files are fsync'd
        with their directory before Success. A power cut can therefore roll back the index's
        last rows but never an acknowledged file: this puts them back at start, before the port
        opens. A file whose content no longer matches its hashed name is left alone and reported.
        """
        known = self.queue.instance_paths()
        problems = []
        for path in self.spool.instance_files():
            if str(path) in known:
                continue
            try:
                part10 = path.read_bytes()
                header = parse_header(part10)
                uids = examine(part10, str(header.get("SOPClassUID", "")), self.max_instance_bytes)
                digest = hashlib.sha256(part10[dataset_offset(part10):]).hexdigest()
                if self.spool.instance_path(f"{uids['SOPInstanceUID']}|{digest}") != path:
                    raise RejectedInstance(status.CANNOT_UNDERSTAND, "content does not match its name")
            except (RejectedInstance, OSError, ValueError) as exc:
                problems.append(f"{path.name}: {exc}")
                continue
            ref = InstanceRef(uids["SOPClassUID"], uids["SOPInstanceUID"], uids["SeriesInstanceUID"],
                              uids["StudyInstanceUID"], str(path), digest, len(part10))
            self.queue.add_instance(ref, uids["Modality"][:16], "recovered")
        return problems


def dataset_offset(part10: bytes) -> int:
    """Where the data set starts in a Part-10 file: preamble, 'DICM', then the file meta group,
    whose first element (0002,0000) gives its length.

    Raises:
        ValueError: not a Part-10 file with a group length.
    """
    if part10[128:132] != b"DICM" or part10[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not a Part-10 file with File Meta Information Group Length first")
    return 144 + int.from_bytes(part10[140:144], "little")


def examine(part10: bytes, context_sop_class: str, max_instance_bytes: int) -> dict[str, str]:
    """Everything decided from the received bytes alone (no disk): the identifying UIDs, or why not.

    Raises:
        RejectedInstance: 0xC000 unparseable, bad UIDs or a decoded size above `max_instance_bytes`;
            0xA900 when the data set's SOP class is not the presentation context's.
    """
    header = parse_header(part10)
    # a value of the wrong type (a sequence where a UID belongs) counts as missing; never str() it
    uids = {k: v if isinstance(v := header.get(k, ""), str) else "" for k in _HEADER_TAGS}
    for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = uids[key]
        if not value or len(value) > 64 or not _UID_RE.match(value):
            raise RejectedInstance(status.CANNOT_UNDERSTAND, f"{key} missing or not a valid UID")
    if uids["SOPClassUID"] != context_sop_class:
        raise RejectedInstance(
            status.DATASET_MISMATCH,
            f"data set SOP class {uids['SOPClassUID']} differs from the presentation context "
            f"{context_sop_class}",
        )
    decoded = decoded_size(header)
    if decoded > max_instance_bytes:
        raise RejectedInstance(
            status.CANNOT_UNDERSTAND,
            f"decoded pixel data would be {decoded} bytes, above storage.max_instance_bytes "
            f"({max_instance_bytes})",
        )
    return uids


def parse_header(part10: bytes) -> pydicom.Dataset:
    """Read the identifying attributes only; pixel data stays as received.

    Raises:
        RejectedInstance: 0xC000 when the bytes are not a DICOM data set.
    """
    try:
        tags = _HEADER_TAGS + _GEOMETRY_TAGS
        ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True, specific_tags=tags)
        for key in tags:
            ds.get(key)  # force decoding of each element now, inside this try
    except Exception as exc:  # untrusted bytes: any parser failure means "cannot understand"
        reason = f"not a parseable DICOM data set: {type(exc).__name__}"
        raise RejectedInstance(status.CANNOT_UNDERSTAND, reason) from exc
    return ds



def decoded_size(header: pydicom.Dataset) -> int:
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
        raise RejectedInstance(status.CANNOT_UNDERSTAND, reason) from exc
    if min(rows, cols, frames, samples, bits) < 0:
        raise RejectedInstance(status.CANNOT_UNDERSTAND, "image geometry has a negative value")
    return rows * cols * frames * samples * ((bits + 7) // 8)
