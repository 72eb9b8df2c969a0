"""The export's de-identifier on one dataset: keyed, stable pseudonyms; nested identifiers; burned-in images."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from edge_ai import phantoms
from edge_ai.export.deid import BurnedInAnnotation, Deidentifier, Pseudonyms, load_or_create_key


def _source() -> Dataset:
    pixels, _ = phantoms.chest_xray(np.random.default_rng(5), size=64, lesion=False)
    ds = phantoms.dx_dataset(pixels, patient_id="MRN-1", patient_name="ROE^RICHARD", study_date="20230102")
    ds.InstanceCreationDate = "20230103"  # retained by the Basic Profile: moves with the other dates
    item = Dataset()
    item.PersonName = "NESTED^NAME"
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.999.1"
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.ReferencedImageEvidenceSequence = Sequence([item])
    return ds


def test_pseudonyms_are_keyed_and_stable() -> None:
    """The same source gives the same pseudonyms with the same key, and others with another key."""
    a1 = Deidentifier(Pseudonyms(b"k" * 32)).apply(_source())
    a2 = Deidentifier(Pseudonyms(b"k" * 32)).apply(copy.deepcopy(_source()))
    b = Deidentifier(Pseudonyms(b"x" * 32)).apply(_source())
    assert a1.PatientID == Pseudonyms(b"k" * 32).patient_id("MRN-1") != b.PatientID
    nested = a1.ReferencedImageEvidenceSequence[0]
    assert nested.ReferencedSOPInstanceUID == Pseudonyms(b"k" * 32).uid("1.2.826.0.1.3680043.10.999.1")
    assert nested.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"  # a standard UID is not identifying
    assert nested.PersonName == ""
    for ds in (a1, a2):
        assert ds.StudyDate == a1.StudyDate != "20230102"
    gap = [pydicom.valuerep.DA(d) for d in (a1.InstanceCreationDate, a1.StudyDate)]
    assert (gap[0] - gap[1]).days == 1  # the interval between the dates survives
    assert len(Pseudonyms(b"k" * 32).uid("1.2.3")) <= 64


def test_burned_in_annotation_is_refused() -> None:
    """An image whose Burned In Annotation is YES or missing is not exported at all."""
    for value in ("YES", None):
        ds = _source()
        if value is None:
            del ds.BurnedInAnnotation
        else:
            ds.BurnedInAnnotation = value
        with pytest.raises(BurnedInAnnotation):
            Deidentifier(Pseudonyms(b"k" * 32)).apply(ds)


def test_key_made_once_private(tmp_path: Path) -> None:
    """Without export.hmac_key_file a key is made at first use, readable by the owner only, then reused."""
    path = tmp_path / "var" / "export-hmac.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and os.stat(path).st_mode & 0o777 == 0o600
    assert load_or_create_key(path) == key
