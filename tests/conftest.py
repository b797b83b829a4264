"""Shared test fixtures: a fresh journal and a clean in-memory world per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import testing
from controller.journal import Journal

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_fakes() -> Iterator[None]:
    testing.reset()
    yield
    testing.reset()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.db")
    yield j
    j.close()
