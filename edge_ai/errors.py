"""One error tree for edge_ai; errors are translated to statuses/exit codes at boundaries only."""

from __future__ import annotations


class EdgeAIError(Exception):
    """Base of every error edge_ai raises on purpose."""


class ConfigError(EdgeAIError):
    """The configuration (or a model package it names) is invalid; the message names the key."""


class RejectedInstance(EdgeAIError):
    """An incoming instance is refused; `status` is the DIMSE status the SCP answers with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class TransientError(EdgeAIError):
    """A failure worth retrying later (destination down, timeout)."""


class PermanentError(EdgeAIError):
    """A failure that retrying cannot fix (destination refuses the object, bad data)."""


class ModelError(EdgeAIError):
    """A model package is unusable: hash mismatch, failed self-test, runtime missing."""


class ImagingError(PermanentError):
    """Pixel data cannot be decoded or does not fit the model's input."""
