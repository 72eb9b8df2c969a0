"""DICOM audit messages (PS3.15 A.5) built from audit log lines: one table, event -> builder.

Pure: a line of the audit log (already written, hash-chained) goes in, XML bytes come out, so the
message an Audit Record Repository receives says what the local log says, and a line can be
rebuilt after a restart. Participants are AE titles, addresses, TLS subjects and API principals;
the only patient data is what the event itself carries: the Study Instance UID and the Patient ID as
participant objects (PS3.15 A.5.3.4), nothing more of the patient.
"""

from __future__ import annotations

import base64
import ipaddress
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Entry = Mapping[str, Any]
Code = tuple[str, str, str]  # (csd-code, codeSystemName, originalText)

# PS3.16 / PS3.15 codes used here
APPLICATION_ACTIVITY: Code = ("110100", "DCM", "Application Activity")
INSTANCES_ACCESSED: Code = ("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED: Code = ("110104", "DCM", "DICOM Instances Transferred")
EXPORT: Code = ("110106", "DCM", "Export")
QUERY: Code = ("110112", "DCM", "Query")
SECURITY_ALERT: Code = ("110113", "DCM", "Security Alert")
USER_AUTHENTICATION: Code = ("110114", "DCM", "User Authentication")
APPLICATION_START: Code = ("110120", "DCM", "Application Start")
APPLICATION_STOP: Code = ("110121", "DCM", "Application Stop")
LOGIN: Code = ("110122", "DCM", "Login")
LOGOUT: Code = ("110123", "DCM", "Logout")
NODE_AUTHENTICATION: Code = ("110126", "DCM", "Node Authentication")
SECURITY_CONFIGURATION: Code = ("110129", "DCM", "Security Configuration")
RESTRICTED_FUNCTION: Code = ("110132", "DCM", "Use of Restricted Function")
ROLE_APPLICATION: Code = ("110150", "DCM", "Application")
ROLE_DESTINATION: Code = ("110152", "DCM", "Destination Role ID")
ROLE_SOURCE: Code = ("110153", "DCM", "Source Role ID")
ROLE_DESTINATION_MEDIA: Code = ("110154", "DCM", "Destination Media")
STUDY_UID: Code = ("110180", "DCM", "Study Instance UID")
PATIENT_NUMBER: Code = ("2", "RFC-3881", "Patient Number")
NODE_ID: Code = ("110182", "DCM", "Node ID")
URI: Code = ("12", "RFC-3881", "URI")
JOB_ID: Code = ("JOB", "99EDGEAI", "edge_ai job")

SUCCESS, MINOR, SERIOUS, MAJOR = "0", "4", "8", "12"


@dataclass
class Context:
    """What the node knows about itself and its peers, for participants the event names only by key."""

    ae_title: str
    hostname: str
    destinations: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # name -> (user id, address)
    studies: OrderedDict[str, str] = field(default_factory=OrderedDict)  # SR SOP Instance UID -> Study UID
    patients: OrderedDict[str, str] = field(default_factory=OrderedDict)  # SR SOP Instance UID -> Patient ID

    def remember_study(self, sr_uid: str, study_uid: str, patient_id: str | None = None) -> None:
        """sr.created names the study (and patient); the delivery lines after it name only the SR."""
        self.studies[sr_uid] = study_uid
        if patient_id:
            self.patients[sr_uid] = patient_id
        while len(self.studies) > 10000:
            self.studies.popitem(last=False)
        while len(self.patients) > 10000:
            self.patients.popitem(last=False)


def _code(parent: ET.Element, tag: str, code: Code) -> None:
    ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": code[1], "originalText": code[2]})


def _address(peer: str) -> tuple[str, str]:
    """(NetworkAccessPointID, type: 1 machine name, 2 IP address) of "host:port" or a bare host."""
    host = peer.rsplit(":", 1)[0] if peer.count(":") == 1 or peer.startswith("[") else peer
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host, "1"
    return host, "2"


class _Message:
    def __init__(self, event_id: Code, action: str, entry: Entry, outcome: str = SUCCESS,
                 types: tuple[Code, ...] = (), description: str | None = None) -> None:
        self.root = ET.Element("AuditMessage")
        ev = ET.SubElement(self.root, "EventIdentification", {
            "EventActionCode": action, "EventDateTime": str(entry.get("time", "")),
            "EventOutcomeIndicator": outcome})
        _code(ev, "EventID", event_id)
        for t in types:
            _code(ev, "EventTypeCode", t)
        if description:
            ET.SubElement(ev, "EventOutcomeDescription").text = description
        self._objects: list[ET.Element] = []

    def participant(self, user_id: str, requestor: bool, role: Code | None = None, *, alt: str | None = None,
                    name: str | None = None, address: str | None = None) -> _Message:
        attrs = {"UserID": user_id or "unknown", "UserIsRequestor": "true" if requestor else "false"}
        if alt:
            attrs["AlternativeUserID"] = alt
        if name:
            attrs["UserName"] = name
        if address:
            attrs["NetworkAccessPointID"], attrs["NetworkAccessPointTypeCode"] = _address(address)
        el = ET.SubElement(self.root, "ActiveParticipant", attrs)
        if role is not None:
            _code(el, "RoleIDCode", role)
        return self

    def node(self, ctx: Context, requestor: bool, role: Code | None = None) -> _Message:
        return self.participant(ctx.ae_title, requestor, role, alt=f"AETITLES={ctx.ae_title}", address=ctx.hostname)

    def obj(self, object_id: str, id_type: Code, type_code: str, role: str, *, name: str | None = None,
            query: str | None = None, details: Mapping[str, str] | None = None, life_cycle: str | None = None,
            description: ET.Element | None = None) -> _Message:
        attrs = {"ParticipantObjectID": object_id, "ParticipantObjectTypeCode": type_code,
                 "ParticipantObjectTypeCodeRole": role}
        if life_cycle:
            attrs["ParticipantObjectDataLifeCycle"] = life_cycle
        el = ET.Element("ParticipantObjectIdentification", attrs)
        _code(el, "ParticipantObjectIDTypeCode", id_type)
        if query is not None:
            ET.SubElement(el, "ParticipantObjectQuery").text = base64.b64encode(query.encode()).decode()
        else:
            ET.SubElement(el, "ParticipantObjectName").text = name or object_id
        for k, v in (details or {}).items():
            ET.SubElement(el, "ParticipantObjectDetail", {"type": k, "value": base64.b64encode(v.encode()).decode()})
        if description is not None:
            el.append(description)
        self._objects.append(el)
        return self

    def patient(self, patient_id: str) -> _Message:
        """The Patient participant object: the ID only (its name carries the ID too: no patient name)."""
        return self.obj(patient_id, PATIENT_NUMBER, "1", "1", name=patient_id)

    def study(self, study_uid: str, sop_class: str | None = None, instance: str | None = None) -> _Message:
        desc = None
        if sop_class:
            desc = ET.Element("ParticipantObjectDescription")
            cls = ET.SubElement(desc, "SOPClass", {"UID": sop_class, "NumberOfInstances": "1"})
            if instance:
                ET.SubElement(cls, "Instance", {"UID": instance})
        return self.obj(study_uid, STUDY_UID, "2", "3", description=desc)

    def to_bytes(self, ctx: Context) -> bytes:
        ET.SubElement(self.root, "AuditSourceIdentification", {"AuditSourceID": ctx.ae_title})
        self.root.extend(self._objects)
        body: bytes = ET.tostring(self.root, encoding="utf-8", xml_declaration=False)
        return b'<?xml version="1.0" encoding="UTF-8"?>' + body


Builder = Callable[[Entry, Context], "_Message | None"]


def _application(event_type: Code) -> Builder:
    def build(e: Entry, ctx: Context) -> _Message:
        return _Message(APPLICATION_ACTIVITY, "E", e, types=(event_type,)).participant(
            ctx.ae_title, False, ROLE_APPLICATION, alt=f"AETITLES={ctx.ae_title}",
            name=f"edge-ai pid {e.get('pid')}", address=ctx.hostname)
    return build


def _received(e: Entry, ctx: Context) -> _Message:
    msg = _Message(INSTANCES_TRANSFERRED, "C", e)
    msg.participant(str(e.get("calling_ae") or e.get("peer") or ""), True, ROLE_SOURCE,
                    name=e.get("tls_identity"), address=e.get("peer"))
    msg.participant(str(e.get("called_ae") or ctx.ae_title), False, ROLE_DESTINATION,
                    alt=f"AETITLES={ctx.ae_title}", address=ctx.hostname)
    if e.get("study_uid"):
        msg.study(str(e["study_uid"]), e.get("sop_class_uid"), e.get("sop_instance_uid"))
    if e.get("patient_id"):
        msg.patient(str(e["patient_id"]))
    return msg


def _sent(e: Entry, ctx: Context) -> _Message | None:
    outcome = {"delivered": SUCCESS, "dead_letter": SERIOUS}.get(str(e.get("outcome")))
    if outcome is None:  # a retry: the final outcome gets the message
        return None
    dest_id, dest_addr = ctx.destinations.get(str(e.get("destination")), (str(e.get("destination")), ""))
    msg = _Message(INSTANCES_TRANSFERRED, "R", e, outcome, description=e.get("reason"))
    msg.node(ctx, True, ROLE_SOURCE)
    msg.participant(dest_id, False, ROLE_DESTINATION, alt=f"destination {e.get('destination')}",
                    address=dest_addr or None)
    sr = str(e.get("sr_sop_instance_uid", ""))
    study = ctx.studies.get(sr)
    if study:
        msg.study(study, "1.2.840.10008.5.1.4.1.1.88.34", sr)  # Comprehensive 3D SR
    if sr in ctx.patients:
        msg.patient(ctx.patients[sr])
    return msg


def _alert(event_type: Code, outcome: str) -> Builder:
    def build(e: Entry, ctx: Context) -> _Message:
        msg = _Message(SECURITY_ALERT, "E", e, outcome, types=(event_type,))
        msg.node(ctx, False)
        who = e.get("calling_ae") or e.get("principal") or e.get("peer")
        if who:
            msg.participant(str(who), False, name=e.get("tls_identity"), address=e.get("peer"))
        detail = {"Alert Description": str(e.get("reason") or e.get("alert") or e.get("event"))}
        if e.get("peer"):
            msg.obj(_address(str(e["peer"]))[0], NODE_ID, "2", "13", name=str(e["peer"]), details=detail)
        else:
            msg.obj(f"file://{e.get('path', 'audit')}", URI, "2", "13", details=detail)
        return msg
    return build


def _signin(e: Entry, ctx: Context) -> _Message:
    ok = str(e.get("outcome", "ok")) in ("ok", "success") and not e.get("reason")
    kind = LOGOUT if e.get("event") == "ui.signout" else LOGIN
    return (_Message(USER_AUTHENTICATION, "E", e, SUCCESS if ok else MINOR, types=(kind,))
            .participant(str(e.get("principal") or "unknown"), True, address=str(e.get("peer") or "unknown"))
            .node(ctx, False))


def _http(e: Entry, ctx: Context) -> _Message | None:
    path = str(e.get("path", ""))
    if str(e.get("method", "")).upper() != "GET" or not path.startswith(("/v1/jobs", "/dicomweb")):
        return None  # submissions are audited as instances stored; health and metrics are not data
    outcome = SUCCESS if int(e.get("status") or 0) < 400 else MINOR
    bare = path.split("?", 1)[0].rstrip("/")
    jobs = e.get("job_ids") or e.get("jobs") or []
    if isinstance(jobs, (str, int)):
        jobs = [jobs]
    listing = bare in ("/v1/jobs", "/dicomweb/studies") or "?" in path
    msg = _Message(QUERY if listing else INSTANCES_ACCESSED, "E" if listing else "R", e, outcome)
    msg.participant(str(e.get("principal") or "anonymous"), True, ROLE_SOURCE, address=e.get("peer"))
    msg.node(ctx, False, ROLE_DESTINATION)
    if listing:
        msg.obj(bare, URI, "2", "24", query=path)
    for job in jobs:
        msg.obj(str(job), JOB_ID, "2", "20", name=f"job {job}")
    if e.get("study_uid"):
        msg.study(str(e["study_uid"]))
    if not listing and not jobs and not e.get("study_uid"):
        msg.obj(bare, URI, "2", "3")
    return msg


def _export(e: Entry, ctx: Context) -> _Message:
    out = str(e.get("out") or e.get("out_dir") or e.get("path") or "")
    desc = ET.Element("ParticipantObjectDescription")
    ET.SubElement(desc, "Anonymized").text = "true"
    msg = _Message(EXPORT, "R", e, SUCCESS if not e.get("reason") else MINOR)
    msg.participant(str(e.get("principal") or ctx.ae_title), True, name="edge-ai export", address=ctx.hostname)
    msg.participant(f"file://{out}", False, ROLE_DESTINATION_MEDIA)
    return msg.obj(f"file://{out}", URI, "2", "3", name="de-identified export", life_cycle="10",
                   details={"series": str(e.get("series", e.get("series_count", "")))}, description=desc)


# the one table: audit event -> DICOM audit message (PS3.15 A.5.3)
MESSAGES: dict[str, Builder] = {
    "node.start": _application(APPLICATION_START),
    "node.stop": _application(APPLICATION_STOP),
    "instance.stored": _received,
    "delivery.attempt": _sent,
    "security.alert": _alert(NODE_AUTHENTICATION, MINOR),  # refused callers and failed TLS handshakes
    "auth.failed": _alert(RESTRICTED_FUNCTION, MINOR),
    "audit.verify_failed": _alert(SECURITY_CONFIGURATION, MAJOR),
    "ui.signin": _signin,
    "ui.signout": _signin,  # the dashboard's sign-out: User Authentication, Logout
    "http.request": _http,
    "export.done": _export,
}
SEVERITY = {"security.alert": 4, "auth.failed": 4, "audit.verify_failed": 2}  # syslog severity; else 5


def message(entry: Entry, ctx: Context) -> bytes | None:
    """The DICOM audit message for one audit line, or None for events the table does not name."""
    if entry.get("event") == "sr.created" and entry.get("sr_sop_instance_uid") and entry.get("study_uid"):
        ctx.remember_study(str(entry["sr_sop_instance_uid"]), str(entry["study_uid"]), entry.get("patient_id"))
    build = MESSAGES.get(str(entry.get("event")))
    built = build(entry, ctx) if build is not None else None
    return None if built is None else built.to_bytes(ctx)
