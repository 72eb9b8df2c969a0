"""Synthetic phantoms: valid DICOM (dciodvfy), deterministic, with usable ground truth."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edge_ai import phantoms

DCIODVFY = shutil.which("dciodvfy") or ("/usr/bin/dciodvfy" if Path("/usr/bin/dciodvfy").exists() else None)


def _dciodvfy_errors(path: Path) -> list[str]:
    assert DCIODVFY is not None
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("monochrome1", [False, True])
def test_dx_dataset_passes_dciodvfy(tmp_path: Path, monochrome1: bool) -> None:
    """A phantom DX instance (MONOCHROME2 and MONOCHROME1) is a valid DX For Presentation object."""
    ds, _ = phantoms.dx_case(np.random.default_rng(1), size=256, lesion=True, monochrome1=monochrome1)
    path = tmp_path / "dx.dcm"
    phantoms.write_dataset(ds, path)
    assert _dciodvfy_errors(path) == []


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) not installed")
def test_ct_series_passes_dciodvfy(tmp_path: Path) -> None:
    """Every slice of a phantom CT series is a valid CT Image object."""
    series, _ = phantoms.ct_case(np.random.default_rng(2), slices=6, size=128, lesion=True)
    for i in (0, len(series) - 1):
        path = tmp_path / f"ct{i}.dcm"
        phantoms.write_dataset(series[i], path)
        assert _dciodvfy_errors(path) == []


def test_phantoms_are_deterministic_per_seed() -> None:
    """The same seed gives the same image and truth, so test failures can be reproduced."""
    a, ta = phantoms.chest_xray(np.random.default_rng(5), size=128)
    b, tb = phantoms.chest_xray(np.random.default_rng(5), size=128)
    assert np.array_equal(a, b) and ta == tb
    assert a.dtype == np.uint16 and a.max() <= 4095


def test_chest_lesion_is_a_visible_opacity() -> None:
    """A chest nodule is brighter than the same phantom without it, inside a lung-sized radius."""
    img, truth = phantoms.chest_xray(np.random.default_rng(11), size=256, lesion=True)
    assert truth is not None and 0.02 * 256 <= truth.radius <= 0.08 * 256
    r, c = int(truth.row), int(truth.col)
    inner = img[r - 2 : r + 3, c - 2 : c + 3].astype(float).mean()
    ring = img[max(0, r - int(2 * truth.radius)) : r + int(2 * truth.radius) + 1, c].astype(float)
    assert inner > np.median(ring)
    _, none = phantoms.chest_xray(np.random.default_rng(11), size=256, lesion=False)
    assert none is None


def test_ct_lesion_is_hyperdense_on_its_slices() -> None:
    """A CT lesion is +60..+120 HU over its surroundings on the slices the truth names, absent elsewhere."""
    vol, truth = phantoms.ct_volume(np.random.default_rng(3), slices=20, size=256, lesion=True)
    assert truth is not None and truth.first_slice is not None and truth.last_slice is not None
    assert 3 <= truth.last_slice - truth.first_slice + 1 <= 7
    k, r, c = truth.centre_slice, int(truth.row), int(truth.col)
    assert k is not None
    hu = vol.astype(float) - phantoms.HU_OFFSET
    centre = hu[k, r - 2 : r + 3, c - 2 : c + 3].mean()
    assert 20 < centre < 250
    assert truth.on_slice(k) and not truth.on_slice(truth.last_slice + 1)
    assert truth.contains(truth.col + truth.radius * 0.5, truth.row)


def test_datasets_carry_identifiers_and_unique_uids() -> None:
    """Caller-supplied identifiers are kept; every instance gets its own SOP Instance UID."""
    series, _ = phantoms.ct_case(
        np.random.default_rng(4), slices=4, size=64, patient_id="P1", study_instance_uid="1.2.3.4"
    )
    assert {ds.PatientID for ds in series} == {"P1"}
    assert {ds.StudyInstanceUID for ds in series} == {"1.2.3.4"}
    assert len({ds.SOPInstanceUID for ds in series}) == 4
    assert len({ds.SeriesInstanceUID for ds in series}) == 1
    assert [ds.InstanceNumber for ds in series] == [1, 2, 3, 4]
    assert series[0].RescaleIntercept == -1024 and series[0].Modality == "CT"


def test_write_dataset_round_trips(tmp_path: Path) -> None:
    """A written phantom reads back as a Part-10 file with the same pixels."""
    ds, _ = phantoms.dx_case(np.random.default_rng(9), size=64)
    path = tmp_path / "x.dcm"
    phantoms.write_dataset(ds, path)
    back = pydicom.dcmread(path)
    assert back.preamble is not None
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert np.array_equal(back.pixel_array, ds.pixel_array)


def test_enhanced_ct_holds_the_volume_frame_by_frame(tmp_path: Path) -> None:
    """The Enhanced CT phantom holds each slice as a frame, positioned like the slice series; written
    frame by frame it is the same file as written whole."""
    vol, _ = phantoms.ct_volume(np.random.default_rng(4), slices=5, size=32, lesion=False)
    ds = phantoms.enhanced_ct_dataset(vol, study_instance_uid="1.2.3")
    assert ds.NumberOfFrames == 5 and ds.StudyInstanceUID == "1.2.3"
    whole = tmp_path / "whole.dcm"
    phantoms.write_dataset(ds, whole)
    assert np.array_equal(pydicom.dcmread(whole).pixel_array, vol)
    series = phantoms.ct_series_datasets(vol)
    for item, sl in zip(ds.PerFrameFunctionalGroupsSequence, series, strict=True):
        assert item.PlanePositionSequence[0].ImagePositionPatient == sl.ImagePositionPatient
    streamed = tmp_path / "streamed.dcm"
    header = copy.deepcopy(ds)
    del header.PixelData
    phantoms.write_multiframe(header, iter(vol), streamed)
    assert streamed.read_bytes() == whole.read_bytes()
