"""The retraining export: de-identified copies of the selected series and `manifest.jsonl` beside them.

One manifest line per series, rendered from the stored result (reports), the per-job drift record
and the readers' verdicts, never parsed back from an SR: pseudonymous UIDs and patient ID, modality,
why it was selected, the model's output, the drift score, the verdicts (coded findings only) and
the training label they imply. Nothing in it identifies the patient: no source UID, name, date,
accession number, reader comment or time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from edge_ai.export.deid import BurnedInAnnotation, Deidentifier, Pseudonyms
from edge_ai.export.selection import SelectedSeries, select

MANIFEST = "manifest.jsonl"


@dataclass
class ExportSummary:
    series: int = 0
    instances: int = 0
    burned_in_left_out: int = 0
    unreadable_left_out: int = 0  # purged by retention or no longer parseable
    by_reason: dict[str, int] = field(default_factory=dict)


def label_of(sel: SelectedSeries) -> bool | None:
    """The reader's truth for training: their coded findings when given, else their verdict on the
    first model's output (agree: that output; disagree: its opposite); None without feedback."""
    if not sel.feedback:
        return None
    latest = sel.feedback[-1]
    if latest["findings"]:
        return any(f.get("present", True) for f in latest["findings"])
    if not sel.reports:
        return None
    positive = bool(sel.reports[0]["positive"])
    return positive if latest["agree"] else not positive


def export(db_path: Path, out: Path, key: bytes, reasons: set[str], since: float | None,
           until: float | None) -> ExportSummary:
    """Write the export under `out` (created; must be empty); returns what was written and left out."""
    out.mkdir(parents=True, exist_ok=True)
    pseudonyms = Pseudonyms(key)
    deid = Deidentifier(pseudonyms)
    summary = ExportSummary()
    lines: list[str] = []
    for sel in select(db_path, reasons, since, until):
        line = _export_series(sel, out, pseudonyms, deid, summary)
        if line is None:
            continue
        lines.append(json.dumps(line, sort_keys=True))
        summary.series += 1
        for reason in sel.reasons:
            summary.by_reason[reason] = summary.by_reason.get(reason, 0) + 1
    tmp = out / f".{MANIFEST}.tmp"
    with tmp.open("w") as f:
        f.write("".join(ln + "\n" for ln in lines))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / MANIFEST)
    return summary


def _export_series(sel: SelectedSeries, out: Path, p: Pseudonyms, deid: Deidentifier,
                   summary: ExportSummary) -> dict[str, Any] | None:
    series_pseudo = p.uid(sel.series_uid)
    folder = out / p.file_name(series_pseudo)
    files: list[str] = []
    patient: str | None = None
    burned = 0
    for path in sel.instance_paths:
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # purged meanwhile or unreadable: left out, counted
            summary.unreadable_left_out += 1
            continue
        source_pid = str(ds.get("PatientID", ""))
        try:
            deid.apply(ds)
        except BurnedInAnnotation:
            burned += 1
            continue
        patient = p.patient_id(source_pid)
        folder.mkdir(exist_ok=True)
        target = folder / f"{p.file_name(str(ds.SOPInstanceUID))}.dcm"
        ds.save_as(target, enforce_file_format=True)
        files.append(f"{folder.name}/{target.name}")
    summary.burned_in_left_out += burned
    summary.instances += len(files)
    if not files and not burned:
        return None
    return {
        "series_uid": series_pseudo,
        "study_uid": p.uid(sel.study_uid),
        "patient_id": patient,
        "modality": sel.modality,
        "reasons": sel.reasons,
        "job_state": sel.job_state,
        "files": files,
        "burned_in_left_out": burned,
        "results": sel.reports,
        "drift": sel.drift,
        "feedback": sel.feedback,
        "label": label_of(sel),
    }
