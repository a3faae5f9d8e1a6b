"""The two ways a deploy run stops."""

from __future__ import annotations


class UsageError(Exception):
    """An invalid flag or combination; nothing has been touched."""


class DeployError(Exception):
    """A step failed; the message says what to change."""
