"""Synthetic chest X-ray and CT phantoms as valid Part-10 datasets (numpy + pydicom only).

Used by the demo-model training script, by tests and by benchmarks. Nothing here is anatomy-
accurate: the phantoms only need to look enough like a chest X-ray / body CT that the demo
models, the imaging pipeline and the DICOM plumbing can be exercised end to end, with a known
ground truth (`Lesion`) to check results against.

Typical use::

    rng = np.random.default_rng(7)
    ds, truth = dx_case(rng, lesion=True)               # one DX instance + where the nodule is
    series, truth = ct_case(rng, slices=40, lesion=True)  # one CT series + where the lesion is
    volume, truth = ct_volume(rng, slices=400, size=128, lesion=True, lesion_at=300)
    enhanced = enhanced_ct_dataset(volume)                 # the same volume as one Enhanced CT instance
    write_dataset(ds, "/tmp/dx.dcm")
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
)
from pydicom.uid import generate_uid as _generate_uid

__all__ = [
    "Lesion",
    "chest_xray",
    "ct_case",
    "ct_series_datasets",
    "ct_volume",
    "dx_case",
    "dx_dataset",
    "enhanced_ct_dataset",
    "write_dataset",
    "write_multiframe",
]

HU_OFFSET = 1024  # CT stored value = HU + 1024; RescaleIntercept = -1024
_IMPLEMENTATION_UID = UID("1.2.826.0.1.3680043.8.498.1")  # pydicom's root; fine for test data
_DX_MAX = 4095  # 12-bit


@dataclass(frozen=True)
class Lesion:
    """Ground truth of one synthetic finding, in pixel coordinates of the generated image.

    Attributes:
        col: centre column (x), 0-based, may be fractional.
        row: centre row (y).
        radius: in-plane radius in pixels (for CT: on the centre slice).
        first_slice: CT only: first slice index (0-based, in generation order) showing the lesion.
        last_slice: CT only: last slice index showing it (inclusive).
    """

    col: float
    row: float
    radius: float
    first_slice: int | None = None
    last_slice: int | None = None

    @property
    def centre_slice(self) -> int | None:
        if self.first_slice is None or self.last_slice is None:
            return None
        return (self.first_slice + self.last_slice) // 2

    def on_slice(self, index: int) -> bool:
        """True when CT slice `index` shows the lesion (always True for a 2-D image)."""
        if self.first_slice is None or self.last_slice is None:
            return True
        return self.first_slice <= index <= self.last_slice

    def contains(self, col: float, row: float, *, margin: float = 0.0) -> bool:
        """True when pixel (col, row) lies inside the lesion disc (plus `margin` pixels)."""
        return bool(np.hypot(col - self.col, row - self.row) <= self.radius + margin)


# --------------------------------------------------------------------------- geometry helpers


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates (x, y) in 0..1."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(c, c)
    return x, y


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return np.asarray(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0)


def _box_blur(img: np.ndarray, r: int) -> np.ndarray:
    """Separable box blur of radius r (edges replicated); twice ~ a Gaussian."""
    if r <= 0:
        return img
    out = img.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis, dtype=np.float64)
        n = out.shape[axis]
        hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        out = ((hi - lo) / (2 * r + 1)).astype(np.float32)
    return out


def _jitter(rng: np.random.Generator) -> Callable[[float], float]:
    """j(s): a uniform draw in [-s, s] (small anatomical variation)."""

    def j(s: float) -> float:
        return float(rng.uniform(-s, s))

    return j


def _want_lesion(rng: np.random.Generator, lesion: bool | None) -> bool:
    return bool(rng.random() < 0.5) if lesion is None else lesion


# --------------------------------------------------------------------------- chest X-ray


def chest_xray(
    rng: np.random.Generator, size: int = 512, lesion: bool | None = None
) -> tuple[np.ndarray, Lesion | None]:
    """A PA chest X-ray phantom, MONOCHROME2 sense (bright = dense).

    Args:
        rng: source of every random choice (same seed, same image).
        size: rows = columns.
        lesion: True forces a nodule, False forbids one, None draws one with p = 0.5.

    Returns:
        (uint16 image with 12-bit values, the nodule or None). The nodule is a round opacity
        fully inside a lung field, radius 2-8 % of the width.
    """
    x, y = _grid(size)
    j = _jitter(rng)
    img = np.full((size, size), 250.0 + j(60), dtype=np.float32)
    body = _ellipse(x, y, 0.5 + j(0.01), 0.56 + j(0.02), 0.46 + j(0.02), 0.55 + j(0.02))
    img[body] = 1900.0 + j(150)
    lung_cy, lung_ay = 0.45 + j(0.02), 0.29 + j(0.02)
    lungs = []
    for side in (-1, 1):
        lung = _ellipse(x, y, 0.5 + side * (0.2 + j(0.015)), lung_cy, 0.14 + j(0.012), lung_ay)
        lung &= y < lung_cy + lung_ay * 0.85  # flat-ish diaphragm
        lungs.append(lung)
    lung_mask = lungs[0] | lungs[1]
    img[lung_mask] -= 950.0 + j(100)
    # mediastinum and heart (heart bulges into the patient's left = image right)
    medi = _ellipse(x, y, 0.5, lung_cy - 0.05, 0.065 + j(0.01), 0.28)
    heart = _ellipse(x, y, 0.54 + j(0.015), lung_cy + 0.15 + j(0.02), 0.14 + j(0.015), 0.11 + j(0.01))
    soft = medi | heart
    img[soft] = 2050.0 + j(120)
    img[np.abs(x - 0.5) < 0.025] += 450.0  # spine
    lung_free = lung_mask & ~soft
    # ribs: curved bands, denser over the lungs where there is contrast
    ribs = np.zeros_like(img)
    spacing = 0.062 + j(0.004)
    top = lung_cy - lung_ay - 0.02 + j(0.01)
    for side in (-1, 1):
        cx = 0.5 + side * 0.2
        half = (np.sign(x - 0.5) == side) & (np.abs(x - 0.5) > 0.03)
        for k in range(10):
            centre = top + k * spacing + 0.9 * (x - cx) ** 2 - side * 0.05 * (x - cx)
            band = np.abs(y - centre) < 0.011 + j(0.002)
            ribs[band & half & body] = 330.0 + j(60)
    img += _box_blur(ribs, 1)
    # clavicles
    for side in (-1, 1):
        clav = (np.abs(y - (lung_cy - lung_ay + 0.02 + side * 0.01 * (x - 0.5))) < 0.012) & (
            np.abs(x - 0.5 - side * 0.15) < 0.13
        )
        img[clav] += 350.0
    truth: Lesion | None = None
    if _want_lesion(rng, lesion):
        truth = _place_round(rng, lung_free, size, 0.02, 0.08)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        d2 = ((xx + 0.5 - truth.col) ** 2 + (yy + 0.5 - truth.row) ** 2) / truth.radius**2
        img += float(rng.uniform(330.0, 600.0)) * np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
    img = _box_blur(_box_blur(img, max(1, size // 256)), max(1, size // 256))
    img += _box_blur(rng.normal(0.0, 60.0, img.shape).astype(np.float32), 2)  # mottle
    img += rng.normal(0.0, 25.0, img.shape).astype(np.float32)  # quantum noise
    return np.clip(np.rint(img), 0, _DX_MAX).astype(np.uint16), truth


def _place_round(rng: np.random.Generator, mask: np.ndarray, size: int, rmin: float, rmax: float) -> Lesion:
    """A disc of radius rmin..rmax (fraction of width) whose whole rim lies inside `mask`."""
    rows, cols = np.nonzero(mask)
    angles = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
    for attempt in range(500):
        # shrink the radius range after many failures so placement always succeeds
        hi = rmax if attempt < 200 else rmin + (rmax - rmin) * 0.3
        radius = float(rng.uniform(rmin, hi)) * size
        i = int(rng.integers(len(rows)))
        cy, cx = rows[i] + 0.5, cols[i] + 0.5
        px = np.clip((cx + radius * np.cos(angles)).astype(int), 0, size - 1)
        py = np.clip((cy + radius * np.sin(angles)).astype(int), 0, size - 1)
        if mask[py, px].all():
            return Lesion(col=float(cx), row=float(cy), radius=radius)
    raise RuntimeError("could not place a lesion inside the mask")  # pragma: no cover


# --------------------------------------------------------------------------- CT


def ct_volume(
    rng: np.random.Generator, slices: int = 40, size: int = 512, lesion: bool | None = None,
    lesion_at: int | None = None,
) -> tuple[np.ndarray, Lesion | None]:
    """Axial slices (head to feet) of a chest/upper-abdomen body phantom.

    Args:
        rng: source of every random choice.
        slices: number of axial slices (5 mm apart when written by `ct_series_datasets`).
        size: rows = columns.
        lesion: True forces a lesion, False forbids one, None draws one with p = 0.5.
        lesion_at: the slice the lesion is centred on (kept 1-3 slices from the ends); None draws it.

    Returns:
        (int16 array [slices, size, size] of STORED values, i.e. HU + 1024, the lesion or None).
        The lesion is a hyperdense sphere (+60..+120 HU over the soft tissue around it, in-plane
        radius 2.5-5 % of the width) spanning 3-7 slices, inside liver or mediastinal/abdominal soft
        tissue; `first_slice`..`last_slice` are the slices where it is visible.
    """
    x, y = _grid(size)
    j = _jitter(rng)
    bx, by, bax, bay = 0.5 + j(0.01), 0.52 + j(0.015), 0.42 + j(0.02), 0.31 + j(0.02)
    lung_end = 0.55 + j(0.08)  # z-fraction where the lungs end
    liver_start = 0.35 + j(0.06)
    liver = (0.36 + j(0.02), 0.50 + j(0.02), 0.17 + j(0.015), 0.17 + j(0.015))
    hu = np.empty((slices, size, size), dtype=np.float32)
    tissue = np.empty((slices, size, size), dtype=bool)  # where a lesion may sit
    n_ribs = 11
    for k in range(slices):
        t = k / max(1, slices - 1)
        s = np.full((size, size), -1000.0, dtype=np.float32)
        body = _ellipse(x, y, bx, by, bax, bay)
        s[body] = -100.0  # subcutaneous fat
        s[_ellipse(x, y, bx, by, bax - 0.035, bay - 0.03)] = 50.0  # muscle wall
        cavity = _ellipse(x, y, bx, by + 0.01, bax - 0.06, bay - 0.06)
        s[cavity] = 30.0  # soft tissue
        lung_scale = float(np.clip((lung_end - t) / 0.2, 0.0, 1.0)) ** 0.5
        if lung_scale > 0:
            for side in (-1, 1):
                lung = _ellipse(x, y, bx + side * 0.17, by - 0.02, 0.13 * lung_scale, 0.2 * lung_scale)
                s[lung & cavity] = -850.0
        if 0.12 < t < lung_end:
            s[_ellipse(x, y, bx + 0.05, by - 0.09, 0.11, 0.09)] = 40.0  # heart
        if t > liver_start:
            grow = float(np.clip((t - liver_start) / 0.15, 0.2, 1.0))
            s[_ellipse(x, y, liver[0], liver[1], liver[2] * grow, liver[3] * grow) & cavity] = 60.0
        if t > liver_start + 0.15:
            s[_ellipse(x, y, bx + 0.2, by + 0.07, 0.06, 0.09) & cavity] = 48.0  # spleen
        if t > 0.75:
            for side in (-1, 1):
                s[_ellipse(x, y, bx + side * 0.12, by + 0.15, 0.04, 0.06)] = 32.0  # kidneys
        tissue[k] = (s > 0.0) & (s < 100.0) & cavity
        s[_ellipse(x, y, bx + 0.04, by + 0.1, 0.025, 0.025)] = 45.0  # aorta
        s[_ellipse(x, y, bx, by + 0.2, 0.045, 0.045)] = 700.0  # vertebral body cortex
        s[_ellipse(x, y, bx, by + 0.2, 0.036, 0.036)] = 260.0  # cancellous bone
        s[(np.abs(x - bx) < 0.01) & (y > by + 0.24) & (y < by + 0.29)] = 650.0  # spinous process
        if t < 0.7:
            for a in np.linspace(0.0, 2 * np.pi, n_ribs, endpoint=False) + 0.3 + (0.08 if k % 2 else 0.0):
                if abs(np.angle(np.exp(1j * (a - np.pi / 2)))) < 0.45:
                    continue  # no ribs over the spine
                rx, ry = bx + (bax - 0.05) * np.cos(a), by + (bay - 0.045) * np.sin(a)
                s[_ellipse(x, y, float(rx), float(ry), 0.012, 0.012)] = 650.0
        tissue[k] &= s < 100.0
        hu[k] = s
    truth: Lesion | None = None
    if _want_lesion(rng, lesion):
        truth = _ct_lesion(rng, hu, tissue, size, lesion_at)
    hu = np.stack([_box_blur(h, 1) for h in hu])
    hu += rng.normal(0.0, 12.0, hu.shape).astype(np.float32)
    return np.clip(np.rint(hu) + HU_OFFSET, -32768, 32767).astype(np.int16), truth


def _ct_lesion(
    rng: np.random.Generator, hu: np.ndarray, tissue: np.ndarray, size: int, at: int | None = None
) -> Lesion:
    """Burn a hyperdense sphere into `hu` where every slice it spans is soft tissue."""
    slices = hu.shape[0]
    half = int(rng.integers(1, 4))  # spans 2*half+1 slices
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    angles = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
    for attempt in range(2000):
        radius = float(rng.uniform(0.025, 0.05 if attempt < 1000 else 0.03)) * size
        kc = int(rng.integers(half, slices - half)) if at is None else min(max(at, half), slices - half - 1)
        rows, cols = np.nonzero(tissue[kc])
        if len(rows) == 0:
            continue
        i = int(rng.integers(len(rows)))
        cy, cx = rows[i] + 0.5, cols[i] + 0.5
        px = np.clip((cx + 1.15 * radius * np.cos(angles)).astype(int), 0, size - 1)
        py = np.clip((cy + 1.15 * radius * np.sin(angles)).astype(int), 0, size - 1)
        if not all(
            tissue[k][py, px].all() and tissue[k][int(cy), int(cx)] for k in range(kc - half, kc + half + 1)
        ):
            continue
        delta = float(rng.uniform(60.0, 120.0))
        for k in range(kc - half, kc + half + 1):
            r_k = radius * np.sqrt(1.0 - ((k - kc) / (half + 1)) ** 2)
            d = np.hypot(xx - cx, yy - cy)
            hu[k] += delta * np.clip(r_k + 0.5 - d, 0.0, 1.0)  # disc with a 1-pixel soft edge
        return Lesion(
            col=float(cx), row=float(cy), radius=radius, first_slice=kc - half, last_slice=kc + half
        )
    raise RuntimeError("could not place a CT lesion")  # pragma: no cover


# --------------------------------------------------------------------------- DICOM datasets


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _base(
    sop_class: UID,
    modality: str,
    *,
    patient_id: str | None,
    patient_name: str | None,
    study_instance_uid: str | None,
    series_instance_uid: str | None,
    accession_number: str | None,
    study_date: str | None,
    study_time: str | None,
    series_number: int,
) -> Dataset:
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = _generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = "EDGE_AI_PHANTOM"
    ds.file_meta = meta
    date, time = _now()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = study_date or date
    ds.StudyTime = study_time or time
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AccessionNumber = accession_number if accession_number is not None else "PH" + date[2:] + time
    ds.Modality = modality
    ds.Manufacturer = "edge_ai phantom"
    ds.InstitutionName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StationName = "PHANTOM"
    ds.StudyDescription = "Synthetic phantom"
    ds.SeriesDescription = f"Phantom {modality}"
    ds.ManufacturerModelName = "edge_ai.phantoms"
    ds.SoftwareVersions = "1"
    ds.PatientName = patient_name if patient_name is not None else "PHANTOM^SYNTHETIC"
    ds.PatientID = patient_id if patient_id is not None else "PH" + _generate_uid()[-10:]
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_instance_uid or _generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or _generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.BodyPartExamined = "CHEST"
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    return ds


def _pixel_module(ds: Dataset, pixels: np.ndarray, bits_stored: int, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(pixels.astype("<i2" if signed else "<u2")).tobytes()


def dx_dataset(
    pixels: np.ndarray,
    *,
    monochrome1: bool = False,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    accession_number: str | None = None,
    study_date: str | None = None,
    study_time: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    pixel_spacing_mm: float | None = None,
) -> Dataset:
    """A Digital X-Ray Image Storage - For Presentation dataset holding `pixels`.

    Args:
        pixels: uint16 [rows, columns], 12-bit, MONOCHROME2 sense (from `chest_xray`).
        monochrome1: store it inverted (4095 - value) as MONOCHROME1, with the window inverted
            to match, as some CR/DX vendors do; a viewer (and edge_ai) shows the same picture.
        pixel_spacing_mm: detector pixel spacing; default spans a 430 mm detector.
        Other arguments: identifiers; a new UID / ID is generated for each one left out.

    Returns:
        A Part-10 ready dataset (file_meta set, Explicit VR Little Endian) that dciodvfy accepts.
    """
    if pixels.ndim != 2:
        raise ValueError("pixels must be a 2-D array")
    ds = _base(
        DigitalXRayImageStorageForPresentation, "DX",
        patient_id=patient_id, patient_name=patient_name, study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid, accession_number=accession_number,
        study_date=study_date, study_time=study_time, series_number=series_number,
    )  # fmt: skip
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"
    ds.ViewPosition = "PA"
    ds.AcquisitionDeviceProcessingDescription = "synthetic"
    spacing = pixel_spacing_mm or 430.0 / pixels.shape[1]
    ds.ImagerPixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
    ds.PixelSpacing = ds.ImagerPixelSpacing
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Synthetic phantom geometry"
    ds.PositionerType = ""
    ds.AcquisitionContextSequence = []
    ds.PatientOrientation = ["L", "F"]  # PA view: columns to the patient's left, rows to the feet
    chest = Dataset()
    chest.CodeValue, chest.CodingSchemeDesignator, chest.CodeMeaning = "51185008", "SCT", "Chest"
    ds.AnatomicRegionSequence = [chest]
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = "399348003", "SCT", "postero-anterior"
    ds.ViewCodeSequence = [view]
    ds.DetectorType = "SCINTILLATOR"
    ds.KVP = "120"
    ds.ExposureTime = "10"
    ds.XRayTubeCurrent = "200"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    values = np.asarray(pixels, dtype=np.int32)
    body = values[values > 600]
    lo, hi = np.percentile(body if body.size else values, (1.0, 99.0))
    centre, width = (lo + hi) / 2.0, max(hi - lo, 2.0)
    if monochrome1:
        values = _DX_MAX - values
        centre = _DX_MAX - centre
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PresentationLUTShape = "INVERSE"
        ds.PixelIntensityRelationshipSign = -1
    else:
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter = f"{centre:.1f}"
    ds.WindowWidth = f"{width:.1f}"
    _pixel_module(ds, values, bits_stored=12, signed=False)
    return ds


def ct_series_datasets(
    volume: np.ndarray,
    *,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    accession_number: str | None = None,
    study_date: str | None = None,
    study_time: str | None = None,
    series_number: int = 2,
    pixel_spacing_mm: float = 0.7,
    slice_thickness_mm: float = 5.0,
    window: tuple[float, float] = (40.0, 400.0),
) -> list[Dataset]:
    """One CT Image Storage dataset per slice of `volume` (same study, series, frame of reference).

    Args:
        volume: int16 [slices, rows, columns] of stored values (HU + 1024, from `ct_volume`);
            slice i sits at z = -i * slice_thickness_mm (head first, so InstanceNumber = i + 1).
        window: (WindowCenter, WindowWidth) written to every slice, in HU.
        Other arguments: identifiers; a new UID / ID is generated for each one left out.

    Returns:
        Part-10 ready datasets in slice order; RescaleSlope 1, RescaleIntercept -1024.
    """
    if volume.ndim != 3:
        raise ValueError("volume must be [slices, rows, columns]")
    study_instance_uid = study_instance_uid or _generate_uid()
    series_instance_uid = series_instance_uid or _generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or _generate_uid()
    patient_id = patient_id if patient_id is not None else "PH" + _generate_uid()[-10:]
    date, time = _now()
    study_date, study_time = study_date or date, study_time or time
    rows, cols = volume.shape[1:]
    out = []
    for i, plane in enumerate(volume):
        ds = _base(
            CTImageStorage, "CT",
            patient_id=patient_id, patient_name=patient_name, study_instance_uid=study_instance_uid,
            series_instance_uid=series_instance_uid, accession_number=accession_number,
            study_date=study_date, study_time=study_time, series_number=series_number,
        )  # fmt: skip
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = i + 1
        ds.AcquisitionNumber = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.KVP = "120"
        ds.SliceThickness = f"{slice_thickness_mm:g}"
        ds.PixelSpacing = [f"{pixel_spacing_mm:g}", f"{pixel_spacing_mm:g}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        x0 = -pixel_spacing_mm * cols / 2.0
        y0 = -pixel_spacing_mm * rows / 2.0
        z = -i * slice_thickness_mm
        ds.ImagePositionPatient = [f"{x0:g}", f"{y0:g}", f"{z:g}"]
        ds.SliceLocation = f"{z:g}"
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleIntercept = str(-HU_OFFSET)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = f"{window[0]:g}"
        ds.WindowWidth = f"{window[1]:g}"
        ds.LossyImageCompression = "00"
        _pixel_module(ds, plane, bits_stored=16, signed=True)
        out.append(ds)
    return out


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def enhanced_ct_dataset(
    volume: np.ndarray | None,
    *,
    shape: tuple[int, int, int] | None = None,
    order: Sequence[int] | None = None,
    per_frame_values: bool = False,
    slice_thickness_mm: float = 5.0,
    pixel_spacing_mm: float = 0.7,
    window: tuple[float, float] = (40.0, 400.0),
    series_number: int = 3,
    **identifiers: str,
) -> Dataset:
    """One Enhanced CT Image Storage instance holding every slice of `volume` as a frame.

    Geometry as `ct_series_datasets`: slice i at z = -i * slice_thickness_mm; per-frame Plane Position
    and Frame Content, shared Pixel Measures and Plane Orientation. Enough for the node's pipeline (not
    a complete Enhanced CT IOD for dciodvfy).

    Args:
        volume: int16 [slices, rows, columns] of stored values (HU + 1024, from `ct_volume`); None
            leaves Pixel Data out (then `shape` gives the geometry; `write_multiframe` adds the frames).
        order: the slice each stored frame holds (frame k = slice order[k]); default slice order, so
            frame number = slice index + 1.
        per_frame_values: rescale (Pixel Value Transformation) and window (Frame VOI LUT) in every
            frame's Per-frame Functional Groups instead of the Shared ones.
        Other arguments: as `ct_series_datasets` (identifiers: patient_id, study_instance_uid, ...).
    """
    slices, rows, cols = volume.shape if volume is not None else (shape or (0, 0, 0))
    order = list(range(slices)) if order is None else [int(k) for k in order]
    ds = _base(
        EnhancedCTImageStorage, "CT", patient_id=identifiers.get("patient_id"),
        patient_name=identifiers.get("patient_name"), study_instance_uid=identifiers.get("study_instance_uid"),
        series_instance_uid=identifiers.get("series_instance_uid"),
        accession_number=identifiers.get("accession_number"), study_date=identifiers.get("study_date"),
        study_time=identifiers.get("study_time"), series_number=series_number,
    )  # fmt: skip
    ds.FrameOfReferenceUID = identifiers.get("frame_of_reference_uid") or _generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.AcquisitionDateTime = ds.StudyDate + ds.StudyTime
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = len(order)
    ds.SamplesPerPixel, ds.Rows, ds.Columns = 1, rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    values = {
        "PixelValueTransformationSequence": [_item(RescaleIntercept=str(-HU_OFFSET), RescaleSlope="1",
                                                   RescaleType="HU")],
        "FrameVOILUTSequence": [_item(WindowCenter=f"{window[0]:g}", WindowWidth=f"{window[1]:g}")],
    }
    shared = _item(
        PixelMeasuresSequence=[
            _item(PixelSpacing=[f"{pixel_spacing_mm:g}"] * 2, SliceThickness=f"{slice_thickness_mm:g}")
        ],
        PlaneOrientationSequence=[_item(ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])],
        **({} if per_frame_values else values),
    )
    ds.SharedFunctionalGroupsSequence = [shared]
    x0, y0 = -pixel_spacing_mm * cols / 2.0, -pixel_spacing_mm * rows / 2.0
    ds.PerFrameFunctionalGroupsSequence = [
        _item(
            FrameContentSequence=[_item(InStackPositionNumber=k + 1, StackID="1", DimensionIndexValues=[1, k + 1])],
            PlanePositionSequence=[_item(ImagePositionPatient=[f"{x0:g}", f"{y0:g}", f"{-k * slice_thickness_mm:g}"])],
            **(values if per_frame_values else {}),
        )
        for k in order
    ]
    if volume is not None:
        ds.PixelData = np.ascontiguousarray(volume[order].astype("<i2")).tobytes()
    return ds


def write_multiframe(ds: Dataset, frames: Iterable[np.ndarray], path: str | Path) -> None:
    """Write `ds` (no Pixel Data yet, Explicit VR Little Endian) and then `frames` as its Pixel Data,
    one frame at a time: a 1000-frame 512 x 512 file is made without holding its 500 MiB."""
    if "PixelData" in ds:
        raise ValueError("ds already has Pixel Data")
    write_dataset(ds, path)
    size = int(ds.Rows) * int(ds.Columns) * 2 * int(ds.NumberOfFrames)
    with open(path, "ab") as f:
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + size.to_bytes(4, "little"))
        written = 0
        for frame in frames:
            data = np.ascontiguousarray(frame, dtype="<i2").tobytes()
            f.write(data)
            written += len(data)
    if written != size:
        raise ValueError(f"frames hold {written} bytes, Number of Frames x Rows x Columns x 2 is {size}")


def dx_case(
    rng: np.random.Generator,
    *,
    size: int = 512,
    lesion: bool | None = None,
    monochrome1: bool = False,
    **identifiers: str,
) -> tuple[Dataset, Lesion | None]:
    """`chest_xray` + `dx_dataset`: one DX instance and its ground truth."""
    pixels, truth = chest_xray(rng, size=size, lesion=lesion)
    return dx_dataset(pixels, monochrome1=monochrome1, **identifiers), truth  # type: ignore[arg-type]


def ct_case(
    rng: np.random.Generator,
    *,
    slices: int = 40,
    size: int = 512,
    lesion: bool | None = None,
    **identifiers: str,
) -> tuple[list[Dataset], Lesion | None]:
    """`ct_volume` + `ct_series_datasets`: one CT series (slice order) and its ground truth."""
    volume, truth = ct_volume(rng, slices=slices, size=size, lesion=lesion)
    return ct_series_datasets(volume, **identifiers), truth  # type: ignore[arg-type]


def write_dataset(ds: Dataset, path: str | Path) -> None:
    """Write `ds` as a DICOM Part-10 file (preamble, file meta), refusing anything less."""
    dcmwrite(path, ds, enforce_file_format=True)
