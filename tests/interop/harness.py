"""Independent DICOM senders for the interop tests, and the reference they are checked against.

Senders (each a real implementation, on loopback): DCMTK storescu and dcmsend, GDCM gdcmscu, pynetdicom
(in process), dcmjs-dimse (node.js, tests/interop/js) and Orthanc as an SCU (REST upload, then a C-STORE
to a modality). Each returns a `Sent`: the DIMSE status per file where the tool reports one.

What a sender puts on the wire is learnt from DCMTK storescp as the reference receiver: it runs with
`--bit-preserving` (the data set written as received) and accepts only the transfer syntax the node
chose, so the sender encodes for it exactly as it did for the node; the node must keep those bytes.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib import request as urlrequest

import pydicom
from peers import DCMTK, PEER_ENV, NodeProcess, Orthanc, dataset_bytes, free_port, wait_port

JS_DIR = Path(__file__).parent / "js"
GDCMSCU = shutil.which("gdcmscu") or "/usr/bin/gdcmscu"
NODE_JS = shutil.which("node") or "/usr/bin/node"
NPM = shutil.which("npm") or "/usr/bin/npm"
SUCCESS = 0x0000


@dataclass
class Sent:
    """What a sender reported: a status per file (None where it got no response), and its output."""

    statuses: dict[str, int | None]
    output: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def all_success(self) -> bool:
        return bool(self.statuses) and all(s == SUCCESS for s in self.statuses.values())


# ---- the node's spool ----------------------------------------------------------------------------------


def stored_file(node: NodeProcess, sop_instance_uid: str) -> Path | None:
    """The spool file the node keeps for an instance (the newest version), from its SQLite index; the one
    place the tests know the index layout."""
    db = node.root / "var" / "spool" / "queue.sqlite3"
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute("SELECT path FROM instances WHERE sop_instance_uid=? AND path != '' ORDER BY id DESC",
                          (sop_instance_uid,)).fetchone()
    finally:
        con.close()
    return Path(row[0]) if row else None


def stored_transfer_syntax(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def sop_uids(files: Iterable[Path]) -> dict[Path, tuple[str, str, str]]:
    """(SOP Class, SOP Instance, transfer syntax) of each file, from its header."""
    out = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[path] = (str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID))
    return out


# ---- the reference receiver ------------------------------------------------------------------------------


def _scp_profile(folder: Path, sop_classes: Iterable[str], transfer_syntax: str) -> tuple[str, ...]:
    """storescp options accepting these SOP classes in `transfer_syntax` only."""
    lines = ["[[TransferSyntaxes]]", "[Only]", f"TransferSyntax1 = {transfer_syntax}",
             "[[PresentationContexts]]", "[Contexts]"]
    lines += [f"PresentationContext{i} = {sop}\\Only" for i, sop in enumerate(sorted(set(sop_classes)), 1)]
    lines += ["[[Profiles]]", "[Reference]", "PresentationContexts = Contexts"]
    cfg = folder / "reference.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    return ("-xf", str(cfg), "Reference")


def wire_datasets(send: Callable[[int, str], object], sop_classes: Iterable[str], transfer_syntax: str,
                  ) -> dict[str, bytes]:
    """The data sets `send(port, called_ae)` puts on the wire for a receiver that accepts only
    `transfer_syntax`, by SOP Instance UID, as DCMTK storescp received them (bit-preserving)."""
    with tempfile.TemporaryDirectory(prefix="wire-") as tmp:
        folder = Path(tmp)
        out = folder / "received"
        out.mkdir()
        port = free_port()
        scp = subprocess.Popen(
            [str(DCMTK / "storescp"), "--bit-preserving", "-aet", "REFERENCE", "-od", str(out),
             *_scp_profile(folder, sop_classes, transfer_syntax), str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=PEER_ENV)
        try:
            wait_port(port, 15, scp)
            send(port, "REFERENCE")
        finally:
            scp.terminate()
            log, _ = scp.communicate(timeout=15)
        received = {}
        for path in out.iterdir():
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            received[uid] = dataset_bytes(path)
        if not received:
            raise AssertionError(f"the reference storescp received nothing: {log.decode(errors='replace')}")
        return received


# ---- senders -----------------------------------------------------------------------------------------------


def _by_rc(files: list[Path], out: subprocess.CompletedProcess[str]) -> Sent:
    """DCMTK tools: exit 0 only when every store got Success (they stop at the first failure)."""
    status = SUCCESS if out.returncode == 0 else None
    return Sent({str(f): status for f in files}, out.stdout + out.stderr, {"rc": out.returncode})


def storescu(port: int, called: str, files: list[Path], options: tuple[str, ...] = (),
             calling: str = "STORESCU") -> Sent:
    """DCMTK storescu, all files in one association (a folder with +sd)."""
    out = subprocess.run([str(DCMTK / "storescu"), "-aet", calling, "-aec", called, *options, "127.0.0.1",
                          str(port), *map(str, files)], capture_output=True, text=True, env=PEER_ENV,
                         timeout=120, check=False)
    return _by_rc(files, out)


def dcmsend(port: int, called: str, files: list[Path], options: tuple[str, ...] = (),
            calling: str = "DCMSEND") -> Sent:
    """DCMTK dcmsend (the file's own transfer syntax, decompressing only if it must)."""
    out = subprocess.run([str(DCMTK / "dcmsend"), "-aet", calling, "-aec", called, *options, "127.0.0.1",
                          str(port), *map(str, files)], capture_output=True, text=True, env=PEER_ENV,
                         timeout=120, check=False)
    return _by_rc(files, out)


_GDCM_STATUS = re.compile(r"\(0000,0900\) \?\? \(US\) (\d+)")


def gdcmscu(port: int, called: str, files: list[Path], options: tuple[str, ...] = (),
            calling: str = "GDCMSCU") -> Sent:
    """GDCM gdcmscu, one run per file (it proposes the file's own transfer syntax only). Its exit code is
    no guide (Debian's 3.0.21 aborts after every release, against storescp as well), so the status is read
    from its debug dump of the C-STORE response."""
    statuses: dict[str, int | None] = {}
    output = []
    for path in files:
        out = subprocess.run([GDCMSCU, "-D", "--store", "--aetitle", calling, "--call", called, *options,
                              "127.0.0.1", str(port), str(path)], capture_output=True, text=True,
                             env=PEER_ENV, timeout=60, check=False)
        text = out.stdout + out.stderr
        found = _GDCM_STATUS.findall(text)
        statuses[str(path)] = int(found[-1]) if found else None
        output.append("\n".join(ln for ln in text.splitlines() if not ln.startswith(("Debug", "Last system"))))
    return Sent(statuses, "\n".join(output)[-6000:])


def dcmjs_ready() -> None:
    """Install dcmjs-dimse from the committed lock file when it is not there yet (`npm ci`)."""
    if (JS_DIR / "node_modules" / "dcmjs-dimse").is_dir():
        return
    out = subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, capture_output=True, text=True,
                         timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"npm ci in {JS_DIR} failed: {out.stdout}{out.stderr}")


def dcmjs(port: int, called: str, files: list[Path], options: tuple[str, ...] = (),
          calling: str = "DCMJS") -> Sent:
    """dcmjs-dimse (JavaScript) in one association; options are extra transfer syntaxes to propose."""
    ts = ("--ts", ",".join(options)) if options else ()
    out = subprocess.run([NODE_JS, str(JS_DIR / "store.js"), "127.0.0.1", str(port), calling, called, *ts,
                          *map(str, files)], capture_output=True, text=True, timeout=120, check=False)
    statuses: dict[str, int | None] = {str(f): None for f in files}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            statuses[row["file"]] = row["status"]
    return Sent(statuses, (out.stdout + out.stderr)[-6000:])


def pynetdicom_store(port: int, called: str, files: list[Path], options: tuple[str, ...] = (),
                     calling: str = "PYNETDICOM") -> Sent:
    """pynetdicom StoreSCU in process: one context per SOP class proposing `options` (transfer syntaxes, in
    this order; default: each file's own); a file is streamed from disk as it is where its own syntax was
    accepted, else sent as a data set pynetdicom encodes for the accepted one."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    headers = sop_uids(files)
    for sop_class in sorted({h[0] for h in headers.values()}):
        syntaxes = list(options) or sorted({h[2] for h in headers.values() if h[0] == sop_class})
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    statuses: dict[str, int | None] = {str(f): None for f in files}
    if not assoc.is_established:
        return Sent(statuses, "association not established")
    accepted = {cx.abstract_syntax: cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
    comments = []
    try:
        for path in files:
            try:
                rsp = assoc.send_c_store(path)
            except ValueError:  # not accepted in the file's own syntax: pynetdicom converts a decoded data set
                try:  # between uncompressed syntaxes, as an application holding the object in memory would
                    rsp = assoc.send_c_store(pydicom.dcmread(path))
                except ValueError as exc:
                    comments.append(f"{path.name}: {exc}")
                    continue
            statuses[str(path)] = int(rsp.Status) if "Status" in rsp else None
            if "ErrorComment" in rsp:
                comments.append(f"{path.name}: {rsp.ErrorComment}")
    finally:
        if assoc.is_established:
            assoc.release()
    return Sent(statuses, "\n".join(comments), {"accepted": accepted})


class OrthancSender:
    """Orthanc as an SCU: instances uploaded over REST, then `POST /modalities/{name}/store`."""

    def __init__(self, orthanc: Orthanc) -> None:
        self.orthanc = orthanc

    def _call(self, method: str, path: str, body: bytes, content_type: str) -> Any:
        req = urlrequest.Request(f"http://127.0.0.1:{self.orthanc.http_port}{path}", data=body, method=method,
                                 headers={"Content-Type": content_type})
        with urlrequest.urlopen(req, timeout=120) as rsp:  # noqa: S310 (loopback Orthanc only)
            raw = rsp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    def upload(self, files: list[Path]) -> list[str]:
        ids = []
        for path in files:
            answer = self._call("POST", "/instances", path.read_bytes(), "application/dicom")
            ids.append(answer["ID"])
        return ids

    def __call__(self, port: int, called: str, files: list[Path], options: tuple[str, ...] = (),
                 calling: str = "ORTHANC") -> Sent:
        ids = self.upload(files)
        name = f"m{port}"
        self._call("PUT", f"/modalities/{name}", json.dumps({"AET": called, "Host": "127.0.0.1",
                                                            "Port": port}).encode(), "application/json")
        body = json.dumps({"Resources": ids, "Synchronous": True, "Timeout": 60}).encode()
        try:
            answer = self._call("POST", f"/modalities/{name}/store", body, "application/json")
        except OSError as exc:  # HTTPError: Orthanc reports a failed C-STORE as an HTTP error
            detail = exc.read().decode(errors="replace") if hasattr(exc, "read") else str(exc)
            return Sent({str(f): None for f in files}, f"{exc}: {detail}")
        failed = int(answer.get("FailedInstancesCount", 0))
        status = SUCCESS if failed == 0 and int(answer.get("InstancesCount", 0)) == len(files) else None
        return Sent({str(f): status for f in files}, json.dumps(answer))


# ---- raw C-STORE: exactly the bytes a test gives ---------------------------------------------------------


def raw_store(port: int, sop_class: str, transfer_syntax: str, sop_instance_uid: str, data: bytes,
              calling: str = "RAWSCU") -> tuple[int | None, str]:
    """One C-STORE whose data set is exactly `data` (what a broken modality might send); (status, Error
    Comment)."""
    from pynetdicom import AE
    from pynetdicom.dimse_primitives import C_STORE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ae.add_requested_context(sop_class, [transfer_syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE_AI")
    if not assoc.is_established:
        return None, "association not established"
    try:
        req = C_STORE()
        req.MessageID = 1
        req.AffectedSOPClassUID = sop_class
        req.AffectedSOPInstanceUID = sop_instance_uid
        req.Priority = 2
        req.DataSet = io.BytesIO(data)
        context_id = assoc.accepted_contexts[0].context_id
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0001)
        assoc.dimse.send_msg(req, context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
        assoc._reactor_checkpoint.set()
        if rsp is None:
            return None, "no response"
        return int(rsp.Status), str(getattr(rsp, "ErrorComment", "") or "")
    finally:
        if assoc.is_established:
            assoc.release()
