"""edge_ai.outbox.sender: SRs reach folders and DICOM peers; outages are retried; refusals dead-lettered."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from node_state import State
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from edge_ai.config import DicomDestination, FolderDestination, RetryPolicy
from edge_ai.domain import InstanceRef, JobState
from edge_ai.grouping.jobs import ReportRow
from edge_ai.outbox.sender import Outbox, backoff

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


class Log:
    """Stands in for the structlog logger; remembers event names."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.events.append(event)


def make_sr(path: Path) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = COMPREHENSIVE_3D_SR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientID = "ANON"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


class Setup:
    def __init__(self, tmp_path: Path, destinations: list[FolderDestination | DicomDestination]) -> None:
        self.state = State(tmp_path)
        self.sr_path = tmp_path / "spool" / "reports" / "sr.dcm"
        self.sr = make_sr(self.sr_path)
        self.audits: list[tuple[str, dict[str, Any]]] = []
        self.log = Log()
        self.outbox = Outbox(
            self.state.deliveries, destinations, "EDGE_AI", lambda event, **kw: self.audits.append((event, kw)),
            self.log,
        )
        source = InstanceRef("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.1", "1.2.3.4", "1.2.3", "/x", "0" * 64, 1)
        self.state.add(source)
        self.state.release("a")
        job = self.state.jobs.claim_ready()
        assert job is not None
        self.job_id = job.id
        sr_uids = (str(self.sr.SOPInstanceUID), str(self.sr.SeriesInstanceUID))
        row = ReportRow("demo", "1", "onnxruntime", *sr_uids, str(self.sr_path), False, 0.1)
        self.state.deliveries.report(job.id, [row], [[d.name for d in destinations]])

    def job_state(self) -> str:
        return next(str(s) for s, n in self.state.jobs.counts().items() if n)

    def attempt_all(self, now: float | None = None) -> int:
        due = self.state.deliveries.due(now=now)
        for d in due:
            self.outbox.attempt(d)
        return len(due)


@pytest.fixture
def setup_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Setup] = []

    def make(destinations: list[FolderDestination | DicomDestination]) -> Setup:
        s = Setup(tmp_path, destinations)
        made.append(s)
        return s

    yield make
    for s in made:
        s.outbox.associations.close_all()
        s.state.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dicom_dest(port: int, attempts: int = 8, name: str = "pacs") -> DicomDestination:
    return DicomDestination(
        name=name, type="dicom", ae_title="PACS", host="127.0.0.1", port=port, timeout_s=5,
        retry=RetryPolicy(attempts=attempts, initial_s=1, max_s=60),
    )


@pytest.fixture
def storage_scp() -> Iterator[Any]:
    """Start a pynetdicom Storage SCP for Comprehensive 3D SR on loopback answering `status`."""
    servers: list[Any] = []

    def start(status: int = 0x0000) -> tuple[int, list[Dataset]]:
        received: list[Dataset] = []
        lock = threading.Lock()

        def on_store(event: Any) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            with lock:
                received.append(ds)
            return status

        ae = AE(ae_title="PACS")
        ae.add_supported_context(COMPREHENSIVE_3D_SR, [ExplicitVRLittleEndian])
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        servers.append(server)
        return int(server.socket.getsockname()[1]), received

    yield start
    for server in servers:
        server.shutdown()


# ---- backoff -------------------------------------------------------------------------------------


def test_backoff_doubles_and_is_capped() -> None:
    """Waits grow 1, 2, 4, 8 ... s (within +-20 % jitter) and never exceed max_s."""
    policy = RetryPolicy(attempts=20, initial_s=1, max_s=30)
    rng = random.Random(7)  # noqa: S311 (reproducible jitter, not security)
    for attempt in range(1, 15):
        base = min(30.0, 2.0 ** (attempt - 1))
        for _ in range(50):
            wait = backoff(policy, attempt, rng)
            assert 0.8 * base <= wait <= min(30.0, 1.2 * base)
    assert backoff(policy, 100, rng) <= 30.0


def test_backoff_jitter_spreads_retries() -> None:
    """Many destinations failing at once do not all retry at the same instant."""
    policy = RetryPolicy(attempts=20, initial_s=2, max_s=300)
    rng = random.Random(1)  # noqa: S311 (reproducible jitter, not security)
    waits = {round(backoff(policy, 3, rng), 3) for _ in range(20)}
    assert len(waits) > 10


# ---- folder --------------------------------------------------------------------------------------


def test_folder_destination_receives_the_sr(tmp_path: Path, setup_factory: Any) -> None:
    """The SR appears as <folder>/<StudyUID>/<SOPInstanceUID>.dcm and the job becomes delivered."""
    folder = FolderDestination(name="results", type="folder", path=tmp_path / "results")
    s = setup_factory([folder])
    assert s.attempt_all() == 1
    target = tmp_path / "results" / str(s.sr.StudyInstanceUID) / f"{s.sr.SOPInstanceUID}.dcm"
    assert target.read_bytes() == s.sr_path.read_bytes()
    assert s.job_state() == JobState.DELIVERED
    assert s.audits[-1][0] == "delivery.attempt" and s.audits[-1][1]["outcome"] == "delivered"
    assert [p.name for p in (tmp_path / "results" / ".tmp").iterdir()] == []


def test_folder_destination_missing_sr_is_dead_lettered(tmp_path: Path, setup_factory: Any) -> None:
    """An SR file gone from the spool cannot be sent by retrying: dead letter with the reason."""
    s = setup_factory([FolderDestination(name="results", type="folder", path=tmp_path / "results")])
    s.sr_path.unlink()
    s.attempt_all()
    (dead,) = s.state.deliveries.dead_letters()
    assert "missing" in str(dead["reason"])
    assert s.job_state() == JobState.FAILED


def test_folder_destination_unwritable_is_retried(tmp_path: Path, setup_factory: Any) -> None:
    """A results folder that cannot be written (a file in its place) delays delivery, never loses it."""
    blocker = tmp_path / "results"
    blocker.write_bytes(b"not a folder")
    s = setup_factory([FolderDestination(name="results", type="folder", path=blocker)])
    s.attempt_all()
    assert s.state.deliveries.due() == []
    assert s.state.deliveries.dead_letters() == []
    assert s.job_state() == JobState.REPORTED
    blocker.unlink()
    assert s.attempt_all(now=time.time() + 10) == 1
    assert s.job_state() == JobState.DELIVERED


def test_unconfigured_destination_is_dead_lettered(tmp_path: Path, setup_factory: Any) -> None:
    """A pending delivery to a destination removed from the config is dead-lettered, not retried forever."""
    s = setup_factory([FolderDestination(name="old", type="folder", path=tmp_path / "old")])
    s.outbox.destinations = {}
    s.attempt_all()
    assert "no longer configured" in str(s.state.deliveries.dead_letters()[0]["reason"])


# ---- DICOM ---------------------------------------------------------------------------------------


def test_closed_port_is_retried_then_dead_lettered(setup_factory: Any) -> None:
    """A PACS that is down gets retries with growing waits; after retry.attempts it is a dead letter."""
    s = setup_factory([dicom_dest(free_port(), attempts=3)])
    before = time.time()
    assert s.attempt_all() == 1
    (pending,) = s.state.deliveries.due(now=time.time() + 3600)
    assert pending.attempts == 1
    next_at = s.state.deliveries.next_at()
    assert next_at is not None and next_at >= before + 0.8
    assert s.state.deliveries.due() == []  # not due again at once
    assert s.audits[-1][1]["outcome"] == "retry"

    assert s.attempt_all(now=time.time() + 3600) == 1
    assert s.job_state() == JobState.REPORTED
    assert s.attempt_all(now=time.time() + 3600) == 1
    (dead,) = s.state.deliveries.dead_letters()
    assert dead["destination"] == "pacs" and dead["attempts"] == 3
    assert "gave up after 3 attempts" in str(dead["reason"])
    assert s.job_state() == JobState.FAILED
    assert s.audits[-1][1]["outcome"] == "dead_letter"
    assert s.state.deliveries.due(now=time.time() + 3600) == []


def test_dicom_destination_receives_the_sr(setup_factory: Any, storage_scp: Any) -> None:
    """A real Storage SCP on loopback receives the SR unchanged and the job becomes delivered."""
    port, received = storage_scp()
    s = setup_factory([dicom_dest(port)])
    s.attempt_all()
    assert len(received) == 1
    assert received[0].SOPInstanceUID == s.sr.SOPInstanceUID
    assert received[0].SOPClassUID == COMPREHENSIVE_3D_SR
    assert s.job_state() == JobState.DELIVERED
    assert s.audits[-1][1]["status"] == 0


def test_dicom_refusal_a900_is_dead_lettered_at_once(setup_factory: Any, storage_scp: Any) -> None:
    """A PACS that refuses the object (0xA900) is not retried: dead letter after one attempt."""
    port, received = storage_scp(0xA900)
    s = setup_factory([dicom_dest(port, attempts=8)])
    s.attempt_all()
    assert len(received) == 1
    (dead,) = s.state.deliveries.dead_letters()
    assert dead["attempts"] == 1 and "0xA900" in str(dead["reason"])
    assert s.job_state() == JobState.FAILED


def test_dicom_out_of_resources_is_retried(setup_factory: Any, storage_scp: Any) -> None:
    """A PACS that is temporarily full (0xA700) gets the SR again later."""
    port, _ = storage_scp(0xA700)
    s = setup_factory([dicom_dest(port)])
    s.attempt_all()
    assert s.state.deliveries.dead_letters() == []
    assert s.job_state() == JobState.REPORTED
    assert "0xA700" in str(s.audits[-1][1]["reason"])


def test_one_destination_down_does_not_hold_back_another(
    tmp_path: Path, setup_factory: Any
) -> None:
    """The folder copy is delivered while the PACS is down; the job waits only for the PACS."""
    folder = FolderDestination(name="results", type="folder", path=tmp_path / "results")
    s = setup_factory([folder, dicom_dest(free_port())])
    s.attempt_all()
    assert (tmp_path / "results" / str(s.sr.StudyInstanceUID) / f"{s.sr.SOPInstanceUID}.dcm").exists()
    (pending,) = s.state.deliveries.due(now=time.time() + 3600)
    assert pending.destination == "pacs"
    assert s.job_state() == JobState.REPORTED



# ---- associations kept open between SRs ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _counting_scp() -> tuple[Any, int, list[str]]:
    """A pynetdicom Storage SCP recording 'accepted', 'stored' and 'released' in order."""
    events: list[str] = []
    ae = AE(ae_title="PACS")
    ae.add_supported_context(COMPREHENSIVE_3D_SR, [ExplicitVRLittleEndian])
    handlers = [(evt.EVT_ACCEPTED, lambda e: events.append("accepted")),
                (evt.EVT_C_STORE, lambda e: events.append("stored") or 0x0000),
                (evt.EVT_RELEASED, lambda e: events.append("released"))]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    return server, int(server.socket.getsockname()[1]), events


def _wait_for(events: list[str], count: int, what: str) -> None:
    deadline = time.monotonic() + 5
    while events.count(what) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_srs_to_one_destination_share_an_association_until_it_idles(tmp_path: Path) -> None:
    """Three SRs in a row travel on one association (no set-up per SR); it is released once it has been
    idle for KEEP_OPEN_S, and the next SR opens a new one."""
    from edge_ai.dicom import scu

    server, port, events = _counting_scp()
    clock = Clock()
    associations = scu.Associations(clock)
    try:
        for i in range(3):
            make_sr(tmp_path / f"sr{i}.dcm")
            assert associations.send(dicom_dest(port), tmp_path / f"sr{i}.dcm", "EDGE_AI") == 0x0000
            clock.now += 0.5
        assert events == ["accepted", "stored", "stored", "stored"]
        assert associations.close_idle() == 0  # used 0.5 s ago
        assert associations.next_idle_at() == clock.now - 0.5 + scu.KEEP_OPEN_S
        clock.now += scu.KEEP_OPEN_S
        assert associations.close_idle() == 1
        _wait_for(events, 1, "released")
        assert events[-1] == "released"
        associations.send(dicom_dest(port), tmp_path / "sr0.dcm", "EDGE_AI")
        assert events.count("accepted") == 2
    finally:
        associations.close_all()
        server.shutdown()


def test_an_association_the_destination_dropped_is_replaced_on_the_same_attempt(tmp_path: Path) -> None:
    """The PACS restarts while the node keeps an association open: the next SR is stored on a new
    association at once, on the same attempt, with no error for the outbox to retry."""
    from edge_ai.dicom import scu

    server, port, events = _counting_scp()
    associations = scu.Associations()
    make_sr(tmp_path / "a.dcm")
    make_sr(tmp_path / "b.dcm")
    try:
        associations.send(dicom_dest(port), tmp_path / "a.dcm", "EDGE_AI")
        for held in server.active_associations:  # the PACS goes down: its associations with it
            held.abort()
        server.shutdown()
        server = AE(ae_title="PACS")
        server.add_supported_context(COMPREHENSIVE_3D_SR, [ExplicitVRLittleEndian])
        restarted = server.start_server(("127.0.0.1", port), block=False,
                                        evt_handlers=[(evt.EVT_C_STORE, lambda e: events.append("again") or 0)])
        try:
            assert associations.send(dicom_dest(port), tmp_path / "b.dcm", "EDGE_AI") == 0x0000
            assert events[-1] == "again"
        finally:
            restarted.shutdown()
    finally:
        associations.close_all()


def test_the_outbox_releases_its_associations_when_the_destination_refuses(tmp_path: Path, setup_factory: Any,
                                                                             storage_scp: Any) -> None:
    """A refused SR is dead-lettered as before; its association stays usable for the next SR."""
    port, received = storage_scp(status=0xA900)
    s = setup_factory([dicom_dest(port)])
    s.attempt_all()
    assert s.job_state() == JobState.FAILED and len(received) == 1
    assert s.outbox.associations.next_idle_at() is not None
    s.outbox.associations.close_all()
    assert s.outbox.associations.next_idle_at() is None


def test_a_late_response_on_a_kept_association_is_a_timeout_not_a_resend(tmp_path: Path) -> None:
    """The PACS answers the second SR after the DIMSE timeout: pynetdicom aborts the association, and the
    attempt fails as a timeout. The request reached the PACS, so it is not sent again on a new
    association within the attempt (the outbox's later retry decides)."""
    from edge_ai.dicom import scu
    from edge_ai.errors import TransientError

    stored: list[float] = []

    def store(event: Any) -> int:
        stored.append(time.monotonic())
        if len(stored) == 2:
            time.sleep(2.5)  # past the 1 s timeout
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(COMPREHENSIVE_3D_SR, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    associations = scu.Associations()
    dest = dicom_dest(int(server.socket.getsockname()[1])).model_copy(update={"timeout_s": 1})
    try:
        for name in ("a", "b"):
            make_sr(tmp_path / f"{name}.dcm")
        associations.send(dest, tmp_path / "a.dcm", "EDGE_AI")
        with pytest.raises(TransientError, match="timeout"):
            associations.send(dest, tmp_path / "b.dcm", "EDGE_AI")
        time.sleep(2.0)  # what a resend would have reached by now
        assert len(stored) == 2
    finally:
        associations.close_all()
        server.shutdown()


def test_a_paused_reactor_leaves_the_response_to_the_sender(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before each C-STORE the SCU stops pynetdicom's reactor thread; a message that then arrives (the
    C-STORE response) stays queued for the sender, even when the reactor was descheduled right after
    checking its pause (simulated: its thread takes 20 ms to mark itself running again, a delay a busy
    machine gives at random). pynetdicom's own pause trusts that mark: the reactor then read the response
    as an "unexpected C-STORE service message", the send waited out its DIMSE timeout and the kept
    association was aborted (seen once in a full test run)."""
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_STORE

    from edge_ai.dicom import scu

    def paused(self: Association) -> bool:
        return bool(self.__dict__.get("_paused_flag", False))

    def set_paused(self: Association, value: bool) -> None:
        if not value and threading.current_thread() is self:
            time.sleep(0.02)
        self.__dict__["_paused_flag"] = value

    monkeypatch.setattr(Association, "_is_paused", property(paused, set_paused), raising=False)
    ae = AE(ae_title="PACS")
    ae.add_supported_context(COMPREHENSIVE_3D_SR, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False)
    make_sr(tmp_path / "sr.dcm")
    dest = dicom_dest(int(server.socket.getsockname()[1]))
    assoc = scu._associate(dest, pydicom.dcmread(tmp_path / "sr.dcm"), "EDGE_AI")
    try:
        for attempt in range(8):
            if attempt % 2:
                time.sleep(0.005 * attempt)  # the reactor met at different points of its loop
            # else straight after the last send's resume, before the reactor ran again (back-to-back SRs)
            scu._pause_reactor(assoc)
            response = C_STORE()
            response.MessageIDBeingRespondedTo, response.Status = attempt + 1, 0x0000
            marker = (1, response)
            assoc.dimse.msg_queue.put(marker)  # the peer's response, arrived
            time.sleep(0.05)
            assert assoc.dimse.get_msg(block=False) is marker, f"the reactor took the message (try {attempt})"
            assoc._reactor_checkpoint.set()
    finally:
        assoc.release()
        server.shutdown()


def test_a_status_answered_on_a_kept_association_is_the_attempts_outcome(tmp_path: Path) -> None:
    """A PACS short of resources (0xA700) on a kept association: the SR is stored once, not resent on a
    new association within the attempt; the association stays open for the outbox's later retry."""
    from edge_ai.dicom import scu
    from edge_ai.errors import TransientError

    events: list[str] = []
    answers = iter([0x0000, 0xA700, 0x0000])
    ae = AE(ae_title="PACS")
    ae.add_supported_context(COMPREHENSIVE_3D_SR, [ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_ACCEPTED, lambda e: events.append("accepted")),
        (evt.EVT_C_STORE, lambda e: events.append("stored") or next(answers))])
    associations = scu.Associations()
    dest = dicom_dest(int(server.socket.getsockname()[1]))
    try:
        for name in ("a", "b", "c"):
            make_sr(tmp_path / f"{name}.dcm")
        associations.send(dest, tmp_path / "a.dcm", "EDGE_AI")
        with pytest.raises(TransientError, match="0xA700"):
            associations.send(dest, tmp_path / "b.dcm", "EDGE_AI")
        assert events == ["accepted", "stored", "stored"]
        associations.send(dest, tmp_path / "b.dcm", "EDGE_AI")  # the retry, on the same association
        assert events == ["accepted", "stored", "stored", "stored"]
    finally:
        associations.close_all()
        server.shutdown()
