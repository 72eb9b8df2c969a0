"""HTTP request bodies into the spool as they arrive: one Part-10 instance (`application/dicom`) or several
(`multipart/related; type="application/dicom"`, python-multipart's streaming parser).

Everything here is blocking (file writes, fsync) and runs in a worker thread, fed in batches of chunks by
the event loop. Each instance goes through the same ingest as a C-STORE (`Ingest.receive`): same checks,
same refusals, same fsync before it counts as stored. The File Meta of a Part-10 body is part of the body,
so the spool keeps the bytes exactly as received; its Media Storage SOP Class stands in for the
presentation context a C-STORE would have.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header

from edge_ai.dicom.contexts import STORAGE_CLASSES, TRANSFER_SYNTAXES
from edge_ai.errors import Refusal, RejectedInstance
from edge_ai.http.problems import Problem
from edge_ai.http.walker import BIG_ENDIAN, CutShort, Walker
from edge_ai.spool.ingest import Held, Ingest, Receiving, Stored

STUDY_UID_TAG = 0x0020000D
_META_MAX = 64 * 1024  # a File Meta group longer than this is not one
MAX_FINISHING = 4  # instances of one request being made durable at once (open files, fsyncs in flight)


@dataclass(slots=True)
class Outcome:
    """One instance of a request: stored (`ok`), or refused with its reason. Kept for the whole request, so
    it is small: `stored` (the full record) lives only until `on_outcome` has seen it."""

    index: int
    stored: Stored | None = None
    refusal: RejectedInstance | None = None
    held: Held | None = None  # checked and fsync'd in tmp: kept only if the whole request is
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    size: int = 0
    sha256: str = ""
    ok: bool = False

    def compact(self) -> None:
        if self.stored is not None:
            ref = self.stored.ref
            self.sop_class_uid, self.sop_instance_uid = ref.sop_class_uid, ref.sop_instance_uid
            self.sha256, self.size, self.ok, self.stored = ref.sha256, ref.size, True, None


def _cannot(reason: str) -> RejectedInstance:
    return RejectedInstance(Refusal.CANNOT_UNDERSTAND, reason)


def _what_it_is(head: bytes) -> str:
    """A short name for a body that is not Part-10 DICOM, for the 400 the sender reads."""
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    sample = head[:512]
    if sample and all(32 <= c < 127 or c in (9, 10, 13) for c in sample):
        return "text"
    return "not a DICOM Part-10 file"


def _meta_elements(meta: bytes) -> dict[int, str]:
    """(0002,xxxx) string values from a File Meta group (always explicit VR little endian)."""
    out: dict[int, str] = {}
    pos = 0
    while pos + 8 <= len(meta):
        group, elem = struct.unpack_from("<HH", meta, pos)
        vr = meta[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            (length,) = struct.unpack_from("<L", meta, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", meta, pos + 6)
            pos += 8
        if group != 2 or pos + length > len(meta):
            raise _cannot("File Meta Information is malformed")
        if vr == b"UI":
            out[(group << 16) | elem] = meta[pos:pos + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos += length
    return out


class InstanceSink:
    """One Part-10 instance on its way into the spool, fed in fragments of any size."""

    def __init__(self, ingest: Ingest, assoc: str, index: int, study_uid: str | None = None) -> None:
        self.ingest, self.assoc, self.study_uid = ingest, assoc, study_uid
        self.outcome = Outcome(index)
        self._head: bytearray | None = bytearray()
        self._receiving: Receiving | None = None
        self._walker: Walker | None = None
        self._failed: RejectedInstance | None = None

    def feed(self, data: memoryview) -> None:
        self.outcome.size += len(data)
        if self._failed is not None:
            return
        if self._receiving is not None:
            self._write(data)
            return
        assert self._head is not None
        self._head += data
        try:
            self._try_open()
        except RejectedInstance as exc:
            self._failed, self._head = exc, None

    def _try_open(self) -> None:
        head = self._head
        assert head is not None
        if len(head) >= 132 and head[128:132] != b"DICM":
            raise _cannot(f"body is {_what_it_is(bytes(head[:512]))}, not a DICOM Part-10 file")
        if len(head) < 144:
            return
        if head[132:136] != b"\x02\x00\x00\x00" or head[136:140] != b"UL\x04\x00":
            raise _cannot("File Meta Information Group Length (0002,0000) missing")
        end = 144 + int.from_bytes(head[140:144], "little")
        if end > _META_MAX:
            raise _cannot("File Meta Information group is implausibly long")
        if len(head) < end:
            return
        meta = _meta_elements(bytes(head[144:end]))
        sop_class, uid, syntax = meta.get(0x00020002, ""), meta.get(0x00020003, ""), meta.get(0x00020010, "")
        self.outcome.sop_class_uid, self.outcome.sop_instance_uid = sop_class, uid
        if sop_class not in STORAGE_CLASSES:
            raise RejectedInstance(Refusal.SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class or '(none)'} is not "
                                   "one this node stores (see docs/conformance.md)")
        if syntax not in TRANSFER_SYNTAXES and syntax != BIG_ENDIAN:
            raise _cannot(f"transfer syntax {syntax or '(none)'} is not supported")
        self._walker = Walker(syntax, frozenset({STUDY_UID_TAG}))
        self._receiving = self.ingest.receive(bytes(head[:end]), sop_class, self.assoc, uid or None)
        rest, self._head = memoryview(head)[end:], None
        self._write(rest)

    def _write(self, data: memoryview) -> None:
        assert self._receiving is not None and self._walker is not None
        try:
            self._walker.feed(data)
        except CutShort as exc:
            self._fail(_cannot(f"data set is malformed: {exc}"))
            return
        self._receiving.write(data)

    def _fail(self, refusal: RejectedInstance) -> None:
        self._failed = refusal
        if self._receiving is not None:
            self._receiving.discard()
            self._receiving = None

    def finish(self) -> Outcome:
        """Make the instance durable and indexed, or record why not; never raises RejectedInstance."""
        try:
            self._finish()
        except RejectedInstance as exc:
            self._fail(exc)
            self.outcome.refusal = exc
        return self.outcome

    def _finish(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._receiving is None:
            size = self.outcome.size
            raise _cannot("empty body" if size == 0 else f"body is {_what_it_is(bytes(self._head or b''))}, "
                          f"cut short at {size} bytes before its File Meta ended" if size >= 132
                          else f"body is {_what_it_is(bytes(self._head or b''))}, not a DICOM Part-10 file "
                          f"({size} bytes)")
        assert self._walker is not None
        try:
            self._walker.end()
        except CutShort as exc:
            raise _cannot(str(exc)) from exc
        study = self._walker.text(STUDY_UID_TAG)
        if self.study_uid is not None and study is not None and study != self.study_uid:
            raise RejectedInstance(Refusal.DATASET_MISMATCH, f"Study Instance UID {study} differs from the "
                                   f"study in the request path {self.study_uid}")
        receiving, self._receiving = self._receiving, None
        self.outcome.held = receiving.hold()

    def discard(self) -> None:
        if self._receiving is not None:
            self._receiving.discard()
            self._receiving = None


class BodyIngest:
    """A whole request body: one instance, or the parts of a multipart/related body, each an InstanceSink.

    With a `pool`, each received instance is made durable (fsync, index) there while the next part is read,
    at most MAX_FINISHING at a time: fsyncs of several instances then share the file system's journal
    commits. The answer still waits for every one of them.

    Args:
        on_outcome: called as each instance is decided (from a pool thread: keep it thread-safe).
    """

    def __init__(self, ingest: Ingest, assoc: str, content_type: str, *, multipart_allowed: bool = True,
                 study_uid: str | None = None, on_outcome: Callable[[Outcome], None] = lambda o: None,
                 pool: Executor | None = None) -> None:
        self.ingest, self.assoc, self.study_uid, self.on_outcome = ingest, assoc, study_uid, on_outcome
        self.outcomes: list[Outcome] = []
        self.total = 0
        self._pool = pool
        self._finishing: deque[Future[Outcome]] = deque()
        self._count = 0
        self._sink: InstanceSink | None = None
        self._parser: MultipartParser | None = None
        media, params = parse_options_header(content_type)
        if media == b"application/dicom":
            self._sink = self._new_sink()
        elif media == b"multipart/related" and multipart_allowed:
            kind = params.get(b"type", b"").decode("latin-1").strip('"')
            if kind != "application/dicom":
                raise Problem(415, f'multipart/related parts must be type="application/dicom", not {kind!r}')
            boundary = params.get(b"boundary")
            if not boundary:
                raise Problem(400, "multipart/related without a boundary parameter")
            self._parser = MultipartParser(boundary, {
                "on_part_begin": self._part_begin, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
            })
            self._header = [bytearray(), bytearray()]
            self._part_type = b""
            self._refused_part: Outcome | None = None
        else:
            accepted = 'application/dicom or multipart/related; type="application/dicom"'
            raise Problem(415, f"content type {content_type or '(none)'} is not accepted here: send {accepted}")

    def _new_sink(self) -> InstanceSink:
        self._count += 1
        return InstanceSink(self.ingest, self.assoc, self._count - 1, self.study_uid)

    def feed(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.total += len(chunk)
            if self._parser is not None:
                try:
                    self._parser.write(chunk)
                except Exception as exc:  # python-multipart's MultipartParseError and friends
                    self.discard()
                    raise Problem(400, f"multipart body is malformed: {exc}") from exc
            elif self._sink is not None:
                self._sink.feed(memoryview(chunk))

    def close(self) -> list[Outcome]:
        """The end of the body: the last instance is decided; returns every instance's outcome."""
        if self._parser is not None:
            self._parser.finalize()
            self._collect(0)
            if self._sink is not None:  # a part the body ended inside of: nothing of the request is kept
                self.discard()
                raise Problem(400, "multipart body cut short: its last part has no closing boundary")
            if not self.outcomes:
                raise Problem(400, "multipart body has no parts")
        elif self._sink is not None:
            self._decide(self._sink)
            self._sink = None
        self._collect(0)
        for outcome in self.outcomes:  # the whole request is in: its instances join the spool and the index
            self._release(outcome)
        return self.outcomes

    def discard(self) -> None:
        """The request is abandoned (too large, client gone, malformed): nothing of it is kept, not even
        instances that were complete: it was never acknowledged."""
        if self._sink is not None:
            self._sink.discard()
            self._sink = None
        self._collect(0)
        for outcome in self.outcomes:
            if outcome.held is not None:
                outcome.held.drop()
                outcome.held = None

    def _release(self, outcome: Outcome) -> None:
        held, outcome.held = outcome.held, None
        if held is None:
            return
        try:
            outcome.stored = held.release()
        except RejectedInstance as exc:
            outcome.refusal = exc
        try:
            self.on_outcome(outcome)
        finally:
            outcome.compact()

    def _decide(self, sink: InstanceSink) -> None:
        if self._pool is None:
            self.outcomes.append(self._finish(sink))
            return
        self._finishing.append(self._pool.submit(self._finish, sink))
        self._collect(MAX_FINISHING)

    def _finish(self, sink: InstanceSink) -> Outcome:
        outcome = sink.finish()
        if outcome.held is not None:  # audited and given a job when the request ends (_release)
            return outcome
        try:
            self.on_outcome(outcome)
        finally:
            outcome.compact()
        return outcome

    def _collect(self, keep: int) -> None:
        """Wait for the oldest instances being finished until at most `keep` are left, in body order."""
        while len(self._finishing) > keep:
            self.outcomes.append(self._finishing.popleft().result())

    def _refused(self, outcome: Outcome) -> None:
        self.on_outcome(outcome)
        if self._pool is None:
            self.outcomes.append(outcome)
            return
        done: Future[Outcome] = Future()
        done.set_result(outcome)
        self._finishing.append(done)

    # ---- python-multipart callbacks --------------------------------------------------------------
    def _part_begin(self) -> None:
        self._part_type = b""
        self._refused_part = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header[0]).lower() == b"content-type":
            self._part_type = parse_options_header(bytes(self._header[1]))[0]
        self._header = [bytearray(), bytearray()]

    def _headers_finished(self) -> None:
        if self._part_type in (b"", b"application/dicom"):
            self._sink = self._new_sink()
            return
        self._count += 1
        self._refused_part = Outcome(self._count - 1, refusal=RejectedInstance(
            Refusal.CANNOT_UNDERSTAND, f"part is {self._part_type.decode('latin-1')}, not application/dicom"))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.feed(memoryview(data)[start:end])

    def _part_end(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            self._decide(sink)
        elif self._refused_part is not None:
            self._refused(self._refused_part)
            self._refused_part = None
