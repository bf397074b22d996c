"""The exceptions of the checkpoint hub."""

from __future__ import annotations

from mmpretrain.errors import MMPretrainError


class HubError(MMPretrainError, RuntimeError):
    """Base class for checkpoint hub errors."""


class ChecksumError(HubError):
    """A file's sha256 differs from the expected one."""


class OfflineError(HubError):
    """A checkpoint is not cached and offline mode forbids fetching it."""


class DownloadError(HubError):
    """A download failed for good (client error, or retries exhausted)."""


class CheckpointConfigError(HubError):
    """A checkpoint's embedded config fails the schema: the message names the file and the key."""


class CheckpointReadError(HubError):
    """A checkpoint file cannot be read (empty, truncated, a malformed header); the message names the file."""
