"""The interop matrix: every independent sender a hospital uses (DCMTK storescu and dcmsend, GDCM gdcmscu,
pynetdicom, dcmjs-dimse, Orthanc as an SCU) in every transfer syntax it proposes, and pydicom's real test
files: each instance gets Success, and the node keeps exactly the data set bytes the sender put on the wire
(checked against DCMTK storescp --bit-preserving as the reference receiver; see tests/interop/harness.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import _CI, needs_dcmtk, needs_orthanc
from interop import harness
from interop.harness import Sent, stored_file, stored_transfer_syntax
from peers import NodeProcess, Orthanc, dataset_bytes, dcmtk
from pydicom.data import get_testdata_file
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from edge_ai import phantoms

pytestmark = [pytest.mark.integration, needs_dcmtk]

needs_gdcm = pytest.mark.skipif(shutil.which("gdcmscu") is None and not _CI, reason="GDCM gdcmscu not installed")
needs_node_js = pytest.mark.skipif(shutil.which("node") is None and not _CI, reason="node.js not installed")

# transfer syntax -> how a modality-side tool makes such a file from the explicit VR little endian one
MAKERS: dict[str, tuple[str, ...]] = {
    ExplicitVRLittleEndian: (),
    ImplicitVRLittleEndian: ("dcmconv", "+ti"),
    ExplicitVRBigEndian: ("dcmconv", "+tb"),
    DeflatedExplicitVRLittleEndian: ("dcmconv", "+td"),
    RLELossless: ("dcmcrle",),
    JPEGLosslessSV1: ("dcmcjpeg", "+e1"),
    JPEGLSLossless: ("dcmcjpls", "+el"),
    JPEG2000Lossless: ("pydicom",),
}


def ct_files(folder: Path, ts: str, count: int = 2, seed: int = 0) -> list[Path]:
    """A small phantom CT series (64 x 64, `count` slices, new UIDs) as files in transfer syntax `ts`."""
    folder.mkdir(parents=True, exist_ok=True)
    series, _ = phantoms.ct_case(np.random.default_rng(seed), slices=count, size=64, lesion=False)
    paths = []
    for i, ds in enumerate(series):
        plain = folder / f"plain{i:02d}.dcm"
        phantoms.write_dataset(ds, plain)
        out = folder / f"ct{i:02d}.dcm"
        tool = MAKERS[ts]
        if not tool:
            plain.rename(out)
        elif tool[0] == "pydicom":
            ds = pydicom.dcmread(plain)
            ds.compress(ts)
            ds.save_as(out, enforce_file_format=True)
        else:
            res = dcmtk(tool[0], *tool[1:], str(plain), str(out))
            assert res.returncode == 0, res.stderr
        plain.unlink(missing_ok=True)
        assert pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
        paths.append(out)
    return paths


def _storescu_profile(folder: Path, sop_class: str, syntaxes: list[str]) -> tuple[str, ...]:
    """storescu options proposing one context of `sop_class` with exactly these transfer syntaxes."""
    lines = ["[[TransferSyntaxes]]", "[Proposed]"]
    lines += [f"TransferSyntax{i} = {ts}" for i, ts in enumerate(syntaxes, 1)]
    lines += ["[[PresentationContexts]]", "[Contexts]", f"PresentationContext1 = {sop_class}\\Proposed",
              "[[Profiles]]", "[Matrix]", "PresentationContexts = Contexts"]
    cfg = folder / "storescu.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    return ("-xf", str(cfg), "Matrix")


CT = "1.2.840.10008.5.1.4.1.1.2"
LOSSY = {JPEGBaseline8Bit, pydicom.uid.JPEGExtended12Bit, JPEG2000, pydicom.uid.JPEGLSNearLossless}


@dataclass(frozen=True)
class Row:
    """One cell of the matrix: a sender, the transfer syntax of its files, its options."""

    sender: str
    ts: str
    options: tuple[str, ...] = ()
    expect_ts: str | None = None  # the transfer syntax the node must accept (its own preference)
    count: int = 2
    only: tuple[str, ...] = ()  # storescu: propose exactly these syntaxes (a -xf profile)
    directory: bool = False  # storescu +sd: send a folder

    @property
    def id(self) -> str:
        def name(option: str) -> str:
            return pydicom.uid.UID(option).keyword or option if option[:1].isdigit() else option

        extra = " ".join(map(name, self.options))
        if self.only:
            extra = "only " + ",".join(map(name, self.only))
        return f"{self.sender}[{name(self.ts)}{' ' + extra if extra else ''}]"


ROWS = [
    # DCMTK storescu: its transfer syntax proposals, PDU sizes and a directory send
    Row("storescu", ExplicitVRLittleEndian),
    Row("storescu", ExplicitVRLittleEndian, ("-xe",)),
    Row("storescu", ImplicitVRLittleEndian, ("-xi",), expect_ts=ImplicitVRLittleEndian),
    Row("storescu", ExplicitVRBigEndian, ("-xb",)),
    Row("storescu", ExplicitVRBigEndian, only=(ExplicitVRBigEndian,), expect_ts=ExplicitVRBigEndian),
    Row("storescu", DeflatedExplicitVRLittleEndian, ("-xd",)),
    Row("storescu", DeflatedExplicitVRLittleEndian, only=(DeflatedExplicitVRLittleEndian,),
        expect_ts=DeflatedExplicitVRLittleEndian),
    Row("storescu", JPEGLosslessSV1, ("-xs",)),
    Row("storescu", RLELossless, ("-xr",)),
    Row("storescu", JPEGLSLossless, ("-xt",)),
    Row("storescu", JPEG2000Lossless, ("-xv",)),
    Row("storescu", ExplicitVRLittleEndian, ("-pdu", "4096", "--max-send-pdu", "4096"), count=3),
    Row("storescu", ExplicitVRLittleEndian, ("-pdu", "131072", "--max-send-pdu", "131072"), count=3),
    Row("storescu", ImplicitVRLittleEndian, ("+sd",), count=4, directory=True),
    # DCMTK dcmsend: the file's own transfer syntax
    Row("dcmsend", ExplicitVRLittleEndian),
    Row("dcmsend", ImplicitVRLittleEndian),
    Row("dcmsend", ExplicitVRBigEndian),
    Row("dcmsend", RLELossless),
    # GDCM gdcmscu: proposes exactly the file's transfer syntax
    Row("gdcmscu", ExplicitVRLittleEndian),
    Row("gdcmscu", ImplicitVRLittleEndian),
    Row("gdcmscu", ExplicitVRBigEndian, expect_ts=ExplicitVRBigEndian),
    Row("gdcmscu", JPEG2000Lossless, expect_ts=JPEG2000Lossless),
    # pynetdicom: the proposed list as given, in that order
    Row("pynetdicom", ExplicitVRLittleEndian, (ExplicitVRLittleEndian,)),
    Row("pynetdicom", ImplicitVRLittleEndian, (ImplicitVRLittleEndian,)),
    Row("pynetdicom", ExplicitVRBigEndian, (ExplicitVRBigEndian,), expect_ts=ExplicitVRBigEndian),
    Row("pynetdicom", DeflatedExplicitVRLittleEndian, (DeflatedExplicitVRLittleEndian,)),
    # lossy proposed first: the node must still take the uncompressed syntax
    Row("pynetdicom", ExplicitVRLittleEndian, (JPEGBaseline8Bit, ExplicitVRLittleEndian),
        expect_ts=ExplicitVRLittleEndian),
    Row("pynetdicom", ExplicitVRLittleEndian, (JPEG2000, ImplicitVRLittleEndian, ExplicitVRLittleEndian)),
    # dcmjs-dimse: proposes implicit + explicit LE, and the file's own syntax
    Row("dcmjs", ExplicitVRLittleEndian),
    Row("dcmjs", ImplicitVRLittleEndian),
    Row("dcmjs", ExplicitVRBigEndian),
    # Orthanc as an SCU: REST upload, then C-STORE to the node as a modality
    Row("orthanc", ExplicitVRLittleEndian),
    Row("orthanc", ImplicitVRLittleEndian),
    Row("orthanc", JPEG2000Lossless),
]

Sender = Callable[..., Sent]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the module (any caller), as a real `edge-ai serve` process."""
    node = NodeProcess(tmp_path_factory.mktemp("interop-node")).start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def orthanc_scu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.OrthancSender]:
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc-scu"), aet="ORTHANC").start()
    yield harness.OrthancSender(pacs)
    pacs.stop()


def _sender(row: Row, request: pytest.FixtureRequest) -> Sender:
    if row.sender == "orthanc":
        return request.getfixturevalue("orthanc_scu")  # type: ignore[no-any-return]
    if row.sender == "dcmjs":
        harness.dcmjs_ready()
    senders: dict[str, Sender] = {"storescu": harness.storescu, "dcmsend": harness.dcmsend,
                                  "gdcmscu": harness.gdcmscu, "pynetdicom": harness.pynetdicom_store,
                                  "dcmjs": harness.dcmjs}
    return senders[row.sender]


def _marks(row: Row) -> list[Any]:
    return {"gdcmscu": [needs_gdcm], "dcmjs": [needs_node_js], "orthanc": [needs_orthanc]}.get(row.sender, [])


def check_stored_as_sent(node: NodeProcess, send: Callable[[int, str], Sent], files: list[Path],
                         expect_ts: str | None = None) -> dict[str, str]:
    """Send `files` with `send(port, called_ae)`: every one gets Success and the node keeps exactly the data
    set bytes the sender puts on the wire for the transfer syntax the node accepted. Returns SOP Instance
    UID -> the stored transfer syntax."""
    headers = harness.sop_uids(files)
    sent = send(node.port, "EDGE_AI")
    accepted = sent.extra.get("accepted")
    if accepted is not None:  # pynetdicom: every proposal holds an uncompressed syntax, never to be passed over
        assert not set(accepted.values()) & LOSSY, f"a lossy syntax accepted: {accepted}"
        if expect_ts is not None:
            assert set(accepted.values()) == {expect_ts}, f"accepted contexts: {accepted}"
    assert sent.all_success, f"statuses {sent.statuses}\n{sent.output[-3000:]}"
    stored: dict[str, Path] = {}
    for _, uid, _ in headers.values():
        path = stored_file(node, uid)
        assert path is not None and path.exists(), f"Success but no spool file for {uid}"
        stored[uid] = path
    syntaxes = {uid: stored_transfer_syntax(path) for uid, path in stored.items()}
    if expect_ts is not None:
        assert set(syntaxes.values()) == {expect_ts}, f"stored as {syntaxes}"
    for ts in set(syntaxes.values()):
        sop_classes = {h[0] for h in headers.values()}
        wire = harness.wire_datasets(send, sop_classes, ts)
        for uid in (u for u, t in syntaxes.items() if t == ts):
            assert uid in wire, f"the sender did not send {uid} to the reference receiver"
            assert dataset_bytes(stored[uid]) == wire[uid], f"{uid}: the node keeps other bytes than were sent"
    return syntaxes


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=_marks(r)) for r in ROWS])
def test_sender_and_transfer_syntax(node: NodeProcess, tmp_path: Path, row: Row,
                                    request: pytest.FixtureRequest) -> None:
    """A modality using this DICOM implementation and transfer syntax gets Success for every instance, and
    the node keeps the data set byte for byte as it crossed the wire."""
    files = ct_files(tmp_path / "in", row.ts, row.count)
    options = row.options
    if row.only:
        options = (*options, *_storescu_profile(tmp_path, CT, list(row.only)))
    sender = _sender(row, request)
    targets = [tmp_path / "in"] if row.directory else files

    def send(port: int, called: str) -> Sent:
        return sender(port, called, targets, options)

    check_stored_as_sent(node, send, files, row.expect_ts)


# ---- pydicom's real test files, sent with storescu as they are --------------------------------------------

REAL_FILES = {
    "CT_small.dcm": ExplicitVRLittleEndian,
    "MR_small.dcm": ExplicitVRLittleEndian,
    "MR_small_implicit.dcm": ImplicitVRLittleEndian,
    "MR_small_bigendian.dcm": ExplicitVRBigEndian,
    "MR_small_RLE.dcm": RLELossless,
    "MR_small_jp2klossless.dcm": JPEG2000Lossless,
    "JPEG2000.dcm": JPEG2000,
    "JPEG-lossy.dcm": pydicom.uid.JPEGExtended12Bit,
    "SC_rgb_jpeg_dcmtk.dcm": JPEGBaseline8Bit,
    "image_dfl.dcm": DeflatedExplicitVRLittleEndian,
    "rtplan.dcm": ImplicitVRLittleEndian,
    "rtdose.dcm": ImplicitVRLittleEndian,
}


# storescu proposes a compressed (or big endian, deflated) syntax only when told to
STORESCU_PROPOSES = {
    ExplicitVRBigEndian: ("-xb",),
    DeflatedExplicitVRLittleEndian: ("-xd",),
    RLELossless: ("-xr",),
    JPEG2000Lossless: ("-xv",),
    JPEG2000: ("-xw",),
    pydicom.uid.JPEGExtended12Bit: ("-xx",),
    JPEGBaseline8Bit: ("-xy",),
}


@pytest.mark.parametrize("name", list(REAL_FILES))
def test_real_file_is_stored_as_sent(node: NodeProcess, name: str) -> None:
    """A real-world file (pydicom's test data: CT, MR, RT, JPEG 2000, RLE, deflate, big endian) sent by
    storescu in its own transfer syntax gets Success and is kept byte for byte."""
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} missing"
    files = [Path(path)]
    ts = harness.sop_uids(files)[files[0]][2]
    assert ts == REAL_FILES[name]
    proposal = ("-R", *STORESCU_PROPOSES.get(ts, ()))

    def send(port: int, called: str) -> Sent:
        return harness.storescu(port, called, files, proposal)

    check_stored_as_sent(node, send, files)


# ---- what a broken sender gets ----------------------------------------------------------------------------


def test_data_set_cut_short_is_refused_naming_the_element(node: NodeProcess, tmp_path: Path) -> None:
    """A data set whose last element declares 2 bytes more than follow gets 0xC000 with an Error Comment
    naming that element, and nothing is stored: the modality knows it was not archived."""
    path = ct_files(tmp_path, ExplicitVRLittleEndian, count=1, seed=11)[0]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    data = dataset_bytes(path)
    assert list(pydicom.dcmread(path).keys())[-1] == 0x7FE00010  # Pixel Data is the last element
    status, comment = harness.raw_store(node.port, CT, ExplicitVRLittleEndian, str(ds.SOPInstanceUID),
                                        data[:-2])
    assert status == 0xC000, f"status {status:#06x} ({comment!r})" if status is not None else "no response"
    assert "7FE0,0010" in comment.upper() or "PIXELDATA" in comment.upper().replace(" ", ""), comment
    assert stored_file(node, str(ds.SOPInstanceUID)) is None
    # and the same instance, whole, is then stored
    status, comment = harness.raw_store(node.port, CT, ExplicitVRLittleEndian, str(ds.SOPInstanceUID), data)
    assert status == 0, comment


# ---- every storage SOP class ---------------------------------------------------------------------------


def _storage_classes() -> list[str]:
    """Every storage SOP class in pydicom's UID registry that is not retired (DICOMDIR and the storage
    commitment and management services are not storage classes)."""
    from pydicom._uid_dict import UID_dictionary

    return sorted(uid for uid, (name, kind, _, retired, _) in UID_dictionary.items()
                  if kind == "SOP Class" and "Storage" in name and retired != "Retired"
                  and "Commitment" not in name and "Management" not in name and uid != "1.2.840.10008.1.3.10")


def test_every_storage_sop_class_is_accepted(node: NodeProcess) -> None:
    """A study's other objects (MR, RT, dose reports, presentation states, key objects, ...) are never refused
    at association: every storage SOP class is accepted in explicit and implicit VR little endian."""
    from pynetdicom import AE

    classes = _storage_classes()
    assert len(classes) > 150
    refused = []
    for start in range(0, len(classes), 120):  # at most 128 presentation contexts per association (PS3.8)
        batch = classes[start:start + 120]
        ae = AE(ae_title="ALLCLASSES")
        ae.acse_timeout = ae.network_timeout = 15
        for sop_class in batch:
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EDGE_AI")
        accepted = set()
        if assoc.is_established:  # else none was accepted (pynetdicom aborts) or the node refused
            accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
            assoc.release()
        refused += [sop_class for sop_class in batch if sop_class not in accepted]
    assert not refused, f"{len(refused)} of {len(classes)} refused: " + ", ".join(
        pydicom.uid.UID(uid).name for uid in refused[:20])
