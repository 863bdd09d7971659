"""Docs that must stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from banger.config import setting_names

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_documents_every_key() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    missing = [key for key in setting_names() if f"`{key}`" not in text]
    assert missing == []


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    assert "make demo" in head and "make test" in head


def test_every_test_the_security_doc_names_exists() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    files = set(re.findall(r"tests/[a-z_/]+\.py", text))
    missing_files = sorted(f for f in files if not (ROOT / f).is_file())
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    named = set(re.findall(r"\b(test_\w+)\b(?!\.py)", text)) - {
        Path(f).stem for f in files
    }
    missing_tests = sorted(t for t in named if f"def {t}(" not in sources)
    assert missing_files == [] and missing_tests == []
