"""The SR's source headers, from the index: one instance's header read whole, the rest a few UIDs each.

`report.sr.build_sr` lists every analysed instance of the series as evidence (UIDs), copies patient,
study and equipment attributes from the first in instance order, and references the images that hold
findings (their pixel module). Only that first instance's file is read; the findings' sources are made
from the image records ingest kept; the rest carry their identity and Instance Number alone, so a
10,000-slice series costs a few MB here, never its headers.
"""

from __future__ import annotations

from pydicom import Dataset

from edge_ai.service import reading
from edge_ai.spool.index import Evidence, InstanceIndex, Kept

# kept of an instance without an image record, read from its file (rare: deflated, big endian, LUTs)
_KEEP = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "InstanceNumber",
         "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "NumberOfFrames", "BitsAllocated",
         "PixelRepresentation", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


def sources(index: InstanceIndex, series_id: int, series_uid: str, sop_classes: tuple[str, ...],
            finding_uids: set[str]) -> list[Dataset]:
    """The headers `build_sr` takes for the series' kept instances of `sop_classes` (arrival order).

    Raises:
        ImagingError: a file that must be read no longer parses.
    """
    rows = index.evidence(series_id, sop_classes)
    wanted = [r.instance_id for r in rows if r.study_uid is None or r.sop_instance_uid in finding_uids]
    kept = {k.instance_id: k for k in index.kept(wanted)}
    metas: reading.Metas = {}
    out = [_header(r, kept.get(r.instance_id), series_uid, metas) for r in rows]
    if not out:
        return out
    first = min(range(len(out)), key=lambda i: (int(out[i].get("InstanceNumber") or 0), str(out[i].SOPInstanceUID)))
    ref = kept.get(rows[first].instance_id) or index.kept([rows[first].instance_id])[0]
    out[first] = reading.read_header(ref.ref)[0]
    return out


def _header(row: Evidence, kept: Kept | None, series_uid: str, metas: reading.Metas) -> Dataset:
    if kept is not None:
        if kept.image is not None:
            return reading.record_header(kept.image, metas)
        return reading.read_header(kept.ref, _KEEP)[0]
    ds = Dataset()
    ds.SOPClassUID = row.sop_class_uid
    ds.SOPInstanceUID = row.sop_instance_uid
    ds.StudyInstanceUID = row.study_uid
    ds.SeriesInstanceUID = series_uid
    if row.instance_number is not None:
        ds.InstanceNumber = row.instance_number
    return ds
