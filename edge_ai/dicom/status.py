"""DIMSE status codes the node answers with, in one place."""

from __future__ import annotations

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # no space, spool unwritable
DATASET_MISMATCH = 0xA900  # data set does not match the SOP class of the context
CANNOT_UNDERSTAND = 0xC000  # not parseable as a DICOM data set
SOP_CLASS_NOT_SUPPORTED = 0x0122
PROCESSING_FAILURE = 0x0110

NAMES = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Refused: Out of Resources",
    DATASET_MISMATCH: "Error: Data Set Does Not Match SOP Class",
    CANNOT_UNDERSTAND: "Error: Cannot Understand",
    SOP_CLASS_NOT_SUPPORTED: "Refused: SOP Class Not Supported",
    PROCESSING_FAILURE: "Failure: Processing Failure",
}
