"""Docs that must stay true to the code."""

from __future__ import annotations

from pathlib import Path

from banger.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_documents_every_key() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    missing = [key for key in Settings.model_fields if f"`{key}`" not in text]
    assert missing == []


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    assert "make demo" in head and "make test" in head
