"""The SR of a series from the index: one instance's header read whole, the rest UIDs.

`report.sr.build_sr` lists every analysed instance of the series as evidence (UIDs), copies patient,
study and equipment attributes from the first in instance order, and references the images that hold
findings (their pixel module). Only that first instance's file is read; the findings' sources are made
from the image records ingest kept; the rest are `SourceRef`s (UIDs and Instance Number), and `render`
writes their evidence list straight as bytes (`report.evidence.encode_evidence`), so the SR of a 2,000-slice
series costs what a 100-slice one does, in time and memory, and is byte for byte the SR that highdicom
makes from every header.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import Dataset

from edge_ai.domain import InferenceResult
from edge_ai.errors import PermanentError
from edge_ai.report.sr import PackageInfo, Source, SourceRef, render_sr
from edge_ai.service import reading
from edge_ai.spool.index import Evidence, InstanceIndex, Kept

# kept of an instance without an image record, read from its file (rare: deflated, big endian, LUTs)
_KEEP = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "InstanceNumber",
         "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "NumberOfFrames", "BitsAllocated",
         "PixelRepresentation", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


def render(sources: Sequence[Source], result: InferenceResult, package: PackageInfo, **kwargs: object
           ) -> tuple[Dataset, bytes]:
    """`build_sr` of `sources`, and the bytes of the complete SR (Part-10): the SR object lists only the
    header sources as evidence; the bytes list all of them (`report.sr.render_sr`).

    Raises:
        ValueError: as `build_sr`.
    """
    return render_sr(sources, result, package, **kwargs)  # type: ignore[arg-type]


def sources(index: InstanceIndex, series_id: int, series_uid: str, sop_classes: tuple[str, ...],
            finding_uids: set[str]) -> list[Source]:
    """The headers `build_sr` takes for the series' kept instances of `sop_classes` (arrival order).

    Raises:
        ImagingError: a file that must be read no longer parses.
        PermanentError: the instances carry more than one Study Instance UID (an SR covers one series
            of one study; the sender has to make them agree).
    """
    rows = index.evidence(series_id, sop_classes)
    wanted = [r.instance_id for r in rows if r.study_uid is None or r.sop_instance_uid in finding_uids]
    kept = {k.instance_id: k for k in index.kept(wanted)}
    metas: reading.Metas = {}
    out: list[Source] = [_header(r, kept.get(r.instance_id), series_uid, metas) for r in rows]
    if not out:
        return out
    studies = {str(s.StudyInstanceUID) for s in out}
    if len(studies) > 1:  # no UID in the reason: it reaches logs and the dashboard
        raise PermanentError(f"the instances of this series carry {len(studies)} different Study Instance UIDs;"
                             " an SR reports a series of one study")
    first = min(range(len(out)), key=lambda i: (int(out[i].get("InstanceNumber") or 0), str(out[i].SOPInstanceUID)))
    ref = kept.get(rows[first].instance_id) or index.kept([rows[first].instance_id])[0]
    out[first] = reading.read_header(ref.ref)[0]
    return out


def _header(row: Evidence, kept: Kept | None, series_uid: str, metas: reading.Metas) -> Source:
    if kept is not None:
        if kept.image is not None:
            return reading.record_header(kept.image, metas)
        return reading.read_header(kept.ref, _KEEP)[0]
    assert row.study_uid is not None  # rows without an image record are read (`kept`)
    return SourceRef(row.sop_class_uid, row.sop_instance_uid, row.study_uid, series_uid, _number(row.instance_number))


def _number(text: str | None) -> int | None:
    """Instance Number as pydicom reads an IS (what build_sr orders by)."""
    try:
        return None if text is None or not text.strip() else int(float(text))
    except ValueError:
        return None
