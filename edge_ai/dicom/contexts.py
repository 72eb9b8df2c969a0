"""SOP classes and transfer syntaxes the node accepts (SPEC "DICOM behaviour", docs/conformance.md).

Every storage SOP class is accepted, so a study's other objects (MR, RT, dose reports, presentation
states, key objects) never stall a sender's queue; only the classes in `ANALYSED` go to a model.
"""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"

# "Storage" in the name, but not a storage SOP class of PS3.4 Annex B
_NOT_STORAGE = ("Storage Commitment", "Media Storage Directory")

# Every storage SOP class in pydicom's registry (retired ones too: old modalities still send them).
STORAGE_CLASSES: dict[str, str] = {
    str(uid): info[0] for uid, info in sorted(UID_dictionary.items())
    if info[1] == "SOP Class" and "Storage" in info[0] and not info[0].startswith(_NOT_STORAGE)
}

# The classes whose images are analysed (every frame); the rest are stored and audited only.
ANALYSED: dict[str, str] = {uid: STORAGE_CLASSES[uid] for uid in (
    CT_IMAGE, ENHANCED_CT, DX_PRESENTATION, DX_PROCESSING, CR_IMAGE, MG_PRESENTATION, MG_PROCESSING)}

# The node's preference, first to last: where a context proposes several, the earliest here wins,
# whatever order the caller proposed them in. Uncompressed first (stored and read as received), then
# lossless compression, then lossy.
TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEG2000Lossless,
    JPEGLSNearLossless,
    JPEG2000,
    JPEGExtended12Bit,
    JPEGBaseline8Bit,
]
LOSSY = frozenset({JPEGLSNearLossless, JPEG2000, JPEGExtended12Bit, JPEGBaseline8Bit})
