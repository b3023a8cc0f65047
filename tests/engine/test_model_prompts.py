"""``engine.presets.model_prompts`` is what the model reads (the style's template, the quality
suffix, the combined negative): the bot shows it in /styles preview and Details, so it must be
exactly what ``ImageGenerator.plan`` hands the pipeline."""

from __future__ import annotations

import pytest

from engine.contract import JobRequest, Mode, StyleSpec
from engine.pipeline import ImageGenerator
from engine.presets import BUILTIN_STYLES, MODES, NEUTRAL_NEGATIVE, POSITIVE_MAGIC, model_prompts

STYLES = [
    BUILTIN_STYLES["none"],
    BUILTIN_STYLES["watercolor"],
    StyleSpec("suffix", "film noir", "color"),  # a template without {prompt}
    StyleSpec("braces", "{prompt} in {curly} braces.", ""),
]


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.name)
@pytest.mark.parametrize("negative", [None, "", "text, watermark"])
def test_model_prompts_is_what_the_pipeline_reads(
    generator: ImageGenerator, mode: Mode, style: StyleSpec, negative: str | None
) -> None:
    prompt = "a red fox."
    request = JobRequest("j", 1, prompt, style=style, negative_prompt=negative, mode=mode, seed=1)
    plan = generator.plan(request)
    true_cfg = MODES[Mode(plan.mode)].true_cfg_scale > 1
    assert model_prompts(
        style,
        prompt,
        negative,
        true_cfg=true_cfg,
        positive_magic=generator.settings.positive_magic,
    ) == (plan.full_prompt, plan.negative_prompt)


def test_the_shapes_of_what_the_model_reads() -> None:
    style = BUILTIN_STYLES["watercolor"]
    full, negative = model_prompts(style, "a fox", None, true_cfg=True)
    assert full == style.apply("a fox") + POSITIVE_MAGIC
    assert negative == style.negative
    assert model_prompts(BUILTIN_STYLES["none"], "a fox", None, true_cfg=True) == (
        "a fox" + POSITIVE_MAGIC,
        NEUTRAL_NEGATIVE,
    )
    assert model_prompts(style, "a fox", "cats", true_cfg=False) == (style.apply("a fox"), "")
