"""Defaults the CLI, the API models and the daemon share: one definition each."""

from __future__ import annotations

DEFAULT_IMAGE_SOURCE = "debian:bookworm"
"""What ``banger image build`` bootstraps without ``--from`` (and a first ``vm create`` builds)."""
