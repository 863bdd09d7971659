"""Defaults the CLI, the API models and the daemon share: one definition each."""

from __future__ import annotations

DEFAULT_IMAGE_SOURCE = "debian:bookworm"
"""What ``banger image build`` bootstraps without ``--from`` (and a first ``vm create`` builds)."""

IMPLEMENTED_BACKENDS = ("qemu",)
"""The VMM backends this release implements: what the ``backend`` setting accepts besides
``auto``, which takes the first (Firecracker, when it lands, goes first on hosts with KVM
and a firecracker binary). ``vmm/factory.py`` builds them."""
