"""Shared helpers for banger tests: cached artifacts and fixture building blocks."""
