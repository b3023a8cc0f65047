from __future__ import annotations

from pathlib import Path

import pytest

from engine.pipeline import ImageGenerator
from engine.settings import EngineSettings


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_dir: Path) -> EngineSettings:
    return EngineSettings(model=str(tiny_model_dir), max_side=64, warmup=False, compile=False)


@pytest.fixture(scope="session")
def generator(tiny_settings: EngineSettings) -> ImageGenerator:
    """One loaded tiny pipeline for the engine tests (loading costs about a second)."""
    return ImageGenerator.load(tiny_settings)


class CountingTransformer:
    """Counts transformer forwards so tests can see whether true CFG ran (two per step)."""

    def __init__(self, generator: ImageGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        transformer = generator.pipe.transformer
        original = transformer.forward

        def forward(*args: object, **kwargs: object) -> object:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(transformer, "forward", forward)


@pytest.fixture
def counting(generator: ImageGenerator, monkeypatch: pytest.MonkeyPatch) -> CountingTransformer:
    return CountingTransformer(generator, monkeypatch)
