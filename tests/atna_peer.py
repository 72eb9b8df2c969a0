"""A real Audit Record Repository for tests: Debian's rsyslog with a TLS listener (RFC 5425).

rsyslogd runs as a subprocess with its own config, pid file and work directory, on a free loopback
port, and writes every message it receives (the RFC 5424 frame without its octet count) to one
file, one line each.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree
from peers import free_port, wait_port

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).parent / "data" / "dicom-audit-message.rng")))
BOM = "\ufeff"


@dataclass
class Rsyslog:
    folder: Path
    pki: dict[str, Path]
    mutual: bool = False  # require a client certificate from the test CA
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def received(self) -> Path:
        return self.folder / "received.log"

    def start(self) -> Rsyslog:
        work = self.folder / "work"
        work.mkdir(parents=True, exist_ok=True)
        auth = "x509/certvalid" if self.mutual else "anon"
        conf = self.folder / "rsyslog.conf"
        conf.write_text(f"""
global(workDirectory="{work}" maxMessageSize="64k"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{self.pki['ca']}"
       DefaultNetstreamDriverCertFile="{self.pki['server']}"
       DefaultNetstreamDriverKeyFile="{self.pki['server_key']}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="{auth}")
input(type="imtcp" port="{self.port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\\n")
action(type="omfile" file="{self.received}" template="raw" flushOnTXEnd="on" asyncWriting="off")
""")
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.folder / "rsyslog.pid")],
                                     stdout=(self.folder / "rsyslogd.out").open("ab"), stderr=subprocess.STDOUT)
        wait_port(self.port, 20, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def frames(self) -> list[str]:
        if not self.received.exists():
            return []
        return [ln for ln in self.received.read_text(encoding="utf-8").splitlines() if ln.strip()]

    def messages(self) -> list[etree._Element]:
        """Each received message's XML, parsed (the MSG part after the BOM)."""
        return [etree.fromstring(f.split(BOM, 1)[1].encode()) for f in self.frames()]

    def wait(self, n: int, timeout: float = 30) -> list[etree._Element]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if len(got) >= n:
                return got
            time.sleep(0.1)
        return self.messages()


def event_id(msg: etree._Element) -> str:
    return str(msg.find("EventIdentification/EventID").get("originalText"))


def event_types(msg: etree._Element) -> list[str]:
    return [str(e.get("originalText")) for e in msg.findall("EventIdentification/EventTypeCode")]
