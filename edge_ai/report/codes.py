"""Coded concepts used in edge_ai's SRs, in one place so readers (PACS rules, sr_summary) can match them.

Standard codes come from DICOM (DCM), SNOMED CT (SCT) and UCUM. The one concept DICOM and SNOMED CT
do not offer with the meaning we need — "the model's probability, 0..1, that this finding is
present" — is a private code in the coding scheme ``99EDGEAI`` (private designators start with
"99", PS3.16 8.2). Every SR that uses it declares the scheme in Coding Scheme Identification
Sequence, so receivers can tell what it is.

Codes and where they appear:

=====================  ==============================================  =================================
code                   meaning                                         where
=====================  ==============================================  =================================
99EDGEAI EDGEAI-PROB   Probability of finding (UCUM "1", 0..1)         NUM in every measurement group
SCT 52101004           Present                                         <finding> = Present (positive)
SCT 272519000          Absent                                          <finding> = Absent (negative)
DCM 121106             Comment                                         TEXT: the model's disclaimer
UMLS C0034375          Qualitative Evaluations                         document-level container (TID 1500)
SCT 77477000           Computed tomography                             Procedure Reported for CT
SCT 168537006          Plain radiography                               Procedure Reported for DX/CR/MG
SCT 363679005          Imaging procedure                               Procedure Reported otherwise
DCM 126000             Imaging Measurement Report                      document title (TID 1500)
=====================  ==============================================  =================================

The finding itself (e.g. SCT 427359005 "Solitary nodule of lung") and its site come from the
model package's `labels`, so they change with the model, not here.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

PRIVATE_SCHEME = "99EDGEAI"
PRIVATE_SCHEME_NAME = "edge_ai private codes"

PROBABILITY = CodedConcept(
    value="EDGEAI-PROB", scheme_designator=PRIVATE_SCHEME, meaning="Probability of finding"
)
"""Model output probability in [0, 1] that the finding is present (series-level or per region)."""

UNIT_PROBABILITY = CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
"""UCUM unity: a probability is a dimensionless ratio."""

PRESENT = CodedConcept.from_code(codes.SCT.Present)
ABSENT = CodedConcept.from_code(codes.SCT.Absent)

COMMENT = CodedConcept(value="121106", scheme_designator="DCM", meaning="Comment")
"""Carries the model package's disclaimer (e.g. "Not for diagnostic use")."""

QUALITATIVE_EVALUATIONS = CodedConcept(
    value="C0034375", scheme_designator="UMLS", meaning="Qualitative Evaluations"
)

TITLE = CodedConcept(value="126000", scheme_designator="DCM", meaning="Imaging Measurement Report")

FINDING = CodedConcept(value="121071", scheme_designator="DCM", meaning="Finding")

_PROCEDURE_CT = CodedConcept(value="77477000", scheme_designator="SCT", meaning="Computed tomography")
_PROCEDURE_XR = CodedConcept(value="168537006", scheme_designator="SCT", meaning="Plain radiography")
_PROCEDURE_ANY = CodedConcept(value="363679005", scheme_designator="SCT", meaning="Imaging procedure")


def procedure_reported(modality: str) -> CodedConcept:
    """The TID 1500 "Procedure Reported" for a source series' Modality."""
    if modality == "CT":
        return _PROCEDURE_CT
    if modality in {"DX", "CR", "MG", "RG"}:
        return _PROCEDURE_XR
    return _PROCEDURE_ANY


def coded(value: str, scheme: str, meaning: str) -> CodedConcept:
    """A model package label code (value, scheme, meaning) as a highdicom concept."""
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)
