"""Fixtures of the engine tests; the helpers they wrap live in ``tests.engine.harness``."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.pipeline import ImageGenerator
from engine.settings import EngineSettings
from tests.engine.harness import CountingTransformer

# Still importable from here (older test modules do): the class lives in the harness.
__all__ = ["CountingTransformer"]


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_dir: Path) -> EngineSettings:
    return EngineSettings(model=str(tiny_model_dir), max_side=64, warmup=False, compile=False)


@pytest.fixture(scope="session")
def generator(tiny_settings: EngineSettings) -> ImageGenerator:
    """One loaded tiny pipeline for the engine tests (loading costs about a second)."""
    return ImageGenerator.load(tiny_settings)


@pytest.fixture
def counting(generator: ImageGenerator, monkeypatch: pytest.MonkeyPatch) -> CountingTransformer:
    return CountingTransformer(generator, monkeypatch)
