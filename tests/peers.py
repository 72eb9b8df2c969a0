"""Real peers for tests and benchmarks: the node as a process, DCMTK tools, Orthanc, dciodvfy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# pynetdicom installs its own `storescu`/`echoscu` scripts: always use DCMTK's by full path.
DCMTK = Path("/usr/bin")
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DCIODVFY = "/usr/bin/dciodvfy"
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"  # Debian orthanc-dicomweb
# Debian's DCMTK leaves Nagle's algorithm on unless told otherwise (~45 ms per message).
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout} s")


def dcmtk(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DCMTK / tool), *args], capture_output=True, text=True, env=PEER_ENV,
                          timeout=timeout, check=False)


def storescu(port: int, files: list[Path], *, called: str = "EDGE_AI", calling: str = "MODALITY",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return dcmtk("storescu", "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port),
                 *[str(f) for f in files])


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines dciodvfy reports as errors (warnings are not errors)."""
    out = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True, check=False, timeout=60)
    return [ln for ln in (out.stderr + out.stdout).splitlines() if ln.startswith("Error")]


@dataclass
class NodeProcess:
    """`edge-ai serve` as a real process with its own config, spool and audit under `root`."""

    root: Path
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    destinations: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "edge-ai.yaml"

    @property
    def results(self) -> Path:
        return self.root / "var" / "results"

    @property
    def audit_path(self) -> Path:
        return self.root / "var" / "audit" / "audit.jsonl"

    def write_config(self) -> None:
        cfg: dict[str, Any] = {
            "node": {"ae_title": "EDGE_AI", "host": "127.0.0.1", "port": self.port},
            "storage": {"root": "var", "min_free_bytes": 1024 * 1024},
            "grouping": {"series_timeout_s": 5, "aborted_timeout_s": 5},
            "audit": {"path": "var/audit/audit.jsonl"},
            "metrics": {"port": free_port()},
            "http": {"port": self.http_port},
        }
        if self.destinations is not None:
            cfg["destinations"] = self.destinations
        for key, value in self.extra.items():
            cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(cfg))

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_ai", *args, "--config", str(self.config_path)],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, env: dict[str, str] | None = None, timeout: float = 60) -> NodeProcess:
        if not self.config_path.exists():
            self.write_config()
        self.log_path = self.root / f"node-{int(time.time() * 1000)}.log"
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_ai", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
        try:
            wait_port(self.port, timeout, self.proc)
            if yaml.safe_load(self.config_path.read_text()).get("http", {}).get("enabled", True):
                wait_port(self.http_port, timeout, self.proc)  # the HTTP API opens after the DICOM port
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{self.log()}") from exc
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def api_key(self, name: str = "test", scopes: str = "submit,read,admin") -> str:
        """A new API key from `edge-ai apikey create` (its last line of output)."""
        out = self.cli("apikey", "create", "--name", name, "--scopes", scopes)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line.strip()]


@dataclass
class Orthanc:
    """A real Orthanc PACS on loopback with its own storage, queried over its REST API."""

    root: Path
    aet: str = "PACS"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    plugins: list[str] = field(default_factory=list)  # e.g. ORTHANC_DICOMWEB: STOW-RS at /dicom-web/studies

    def start(self) -> Orthanc:
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "edge_ai-test-pacs",
            "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "SyncStorageArea": True,
            "Plugins": self.plugins,
            "StableAge": 1,
        }
        (self.root / "orthanc.json").write_text(json.dumps(cfg))
        log = (self.root / "orthanc.log").open("wb")
        self.proc = subprocess.Popen([ORTHANC, str(self.root / "orthanc.json")], stdout=log,
                                     stderr=subprocess.STDOUT, env=PEER_ENV)
        wait_port(self.http_port, 30, self.proc)
        wait_port(self.dicom_port, 30, self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as rsp:
            body = rsp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def instances_of_modality(self, modality: str) -> list[str]:
        out = []
        for series_id in self.get("/series"):
            series = self.get(f"/series/{series_id}")
            if series["MainDicomTags"].get("Modality") == modality:
                out.extend(series["Instances"])
        return out

    def file(self, instance_id: str) -> bytes:
        data = self.get(f"/instances/{instance_id}/file")
        assert isinstance(data, bytes)
        return data

    def destination(self, name: str = "pacs") -> dict[str, Any]:
        return {"name": name, "type": "dicom", "ae_title": self.aet, "host": "127.0.0.1", "port": self.dicom_port,
                "retry": {"attempts": 50, "initial_s": 0.2, "max_s": 2.0}}


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


# ---- edge conformance and security helpers (issue 3) -------------------------------------------------------


def make_pki(folder: Path) -> dict[str, Path]:
    """A test CA with a server certificate (127.0.0.1/localhost) and two client certificates (one from
    another CA), made with openssl. Keys are unencrypted PEM, as DCMTK and Python read them."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder, timeout=60)

    def ca(name: str) -> None:
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
            "-subj", f"/O=edge_ai test/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def leaf(name: str, issuer: str, cn: str, ext: str) -> None:
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            f"{name}.key", "-out", f"{name}.csr", "-subj", f"/O=Radiology/CN={cn}")
        (folder / f"{name}.ext").write_text(ext)
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.crt", "-CAkey", f"{issuer}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")

    ca("ca")
    ca("rogue_ca")
    leaf("server", "ca", "edge-ai-node",
         "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    leaf("client", "ca", "CT_SCANNER_1", "extendedKeyUsage=clientAuth\n")
    leaf("rogue", "rogue_ca", "INTRUDER", "extendedKeyUsage=clientAuth\n")
    return {p.stem + ("_key" if p.suffix == ".key" else ""): p for p in folder.iterdir()
            if p.suffix in (".crt", ".key")}


def tls_args(pki: dict[str, Path], client: str | None = "client") -> tuple[str, ...]:
    """storescu/echoscu options for TLS to the node, with or without a client certificate."""
    if client is None:
        return ("+tla", "+cf", str(pki["ca"]))
    return ("+tls", str(pki[f"{client}_key"]), str(pki[client]), "+cf", str(pki["ca"]))


def vm_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def recv_pdu(sock: socket.socket) -> bytes:
    """One whole PDU as it arrived (header and body); shorter if the peer closed first."""
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return head
        head += chunk
    (length,) = struct.unpack(">L", head[2:6])
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return head + body


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux: 5 to clear_refs), so a later peak is this test's."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def echo_ok(port: int, *extra: str, calling: str = "MODALITY", timeout: float = 30) -> bool:
    """True when DCMTK echoscu gets Success from the node."""
    out = dcmtk("echoscu", "-aet", calling, "-aec", "EDGE_AI", "-to", "5", "-ta", "5", "-td", "5", *extra,
                "127.0.0.1", str(port), timeout=timeout)
    return out.returncode == 0


def associate_rq(calling: str = "MODALITY", called: str = "EDGE_AI",
                 sop_class: str = "1.2.840.10008.1.1") -> bytes:
    """An encoded A-ASSOCIATE-RQ PDU proposing one context (Verification by default), for raw-socket tests."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    cx = build_context(sop_class)
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def raw_c_store(port: int, context_sop_class: str, transfer_syntax: str, affected_sop_class: str,
                sop_instance_uid: str, data: bytes, calling: str = "MODALITY") -> int | None:
    """Send one C-STORE whose command and data set bytes are exactly what the test says (what a broken or
    hostile modality might send), over a context of `context_sop_class`; returns the status or None."""
    return raw_c_store_response(port, context_sop_class, transfer_syntax, affected_sop_class, sop_instance_uid,
                                data, calling)[0]


def raw_c_store_response(port: int, context_sop_class: str, transfer_syntax: str, affected_sop_class: str,
                         sop_instance_uid: str, data: bytes, calling: str = "MODALITY") -> tuple[int | None, str]:
    """`raw_c_store`, with the response's Error Comment (or why there is no response)."""
    import io as _io

    from pynetdicom import AE
    from pynetdicom.dimse_primitives import C_STORE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ae.add_requested_context(context_sop_class, [transfer_syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGE_AI")
    if not assoc.is_established:
        return None, "association not established"
    try:
        req = C_STORE()
        req.MessageID = 1
        req.AffectedSOPClassUID = affected_sop_class
        req.AffectedSOPInstanceUID = sop_instance_uid
        req.Priority = 2
        req.DataSet = _io.BytesIO(data)
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


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part-10 file as stored in it (after preamble and file meta)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with path.open("rb") as f:
        read_preamble(f, False)
        _read_file_meta_info(f)
        return f.read()
