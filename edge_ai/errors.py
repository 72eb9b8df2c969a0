"""One error tree for edge_ai; errors are translated to statuses/exit codes at boundaries only."""

from __future__ import annotations

import enum


class EdgeAIError(Exception):
    """Base of every error edge_ai raises on purpose."""


class ConfigError(EdgeAIError):
    """The configuration (or a model package it names) is invalid; the message names the key."""


class Refusal(enum.StrEnum):
    """Why ingest refused an instance. Each boundary maps it to its own answer: the SCP to a DIMSE
    status (dicom/scp.py), the HTTP API to an HTTP status and a STOW-RS Failure Reason."""

    OUT_OF_RESOURCES = "out_of_resources"  # no space, spool or index unwritable
    DATASET_MISMATCH = "dataset_mismatch"  # SOP class or instance UID differs from what was announced
    CANNOT_UNDERSTAND = "cannot_understand"  # not a parseable data set, cut short, unusable UIDs, too large
    SOP_CLASS_NOT_SUPPORTED = "sop_class_not_supported"  # not a storage SOP class


class RejectedInstance(EdgeAIError):
    """An incoming instance is refused: `kind` says which way, `reason` says why (for the peer and audit)."""

    def __init__(self, kind: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class TransientError(EdgeAIError):
    """A failure worth retrying later (destination down, timeout)."""


class PermanentError(EdgeAIError):
    """A failure that retrying cannot fix (destination refuses the object, bad data)."""


class ModelError(EdgeAIError):
    """A model package is unusable: hash mismatch, failed self-test, runtime missing."""


class ImagingError(PermanentError):
    """Pixel data cannot be decoded or does not fit the model's input."""
