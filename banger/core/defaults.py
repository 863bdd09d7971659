"""Defaults the CLI, the API models and the daemon share: one definition each."""

from __future__ import annotations

DEFAULT_IMAGE_SOURCE = "debian:bookworm"
"""What ``banger image build`` bootstraps without ``--from`` (and a first ``vm create`` builds)."""

IMPLEMENTED_BACKENDS = ("qemu", "firecracker")
"""The VMM backends this release implements: what the ``backend`` setting accepts besides
``auto`` (Firecracker on hosts with a usable KVM and a firecracker binary, else QEMU).
``vmm/factory.py`` builds them."""
