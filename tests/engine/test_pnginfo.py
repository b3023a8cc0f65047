"""The PNG's ``parameters`` text chunk in the A1111 / Civitai "PNG Info" format (issue 10, #21).

The reader below follows AUTOMATIC1111's ``parse_generation_parameters``
(modules/infotext_utils.py): the last line holds ``key: value`` pairs (values with a comma,
colon or newline JSON-quoted), a line starting with ``Negative prompt:`` begins the negative
prompt, everything before is the prompt. Civitai's uploader reads the same chunk the same way.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from PIL import Image

from engine.contract import JobRequest, Mode, StyleSpec
from engine.pipeline import ImageGenerator
from engine.pnginfo import a1111_parameters
from engine.presets import public_model_name

# AUTOMATIC1111's pattern for one "key: value" of the last line.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_like_a1111(text: str) -> dict[str, str]:
    """What the "PNG Info" tab shows: Prompt, Negative prompt and every key of the last line."""
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:  # A1111: not a parameter line, part of the prompt
        lines.append(last)
        last = ""
    prompt, negative, in_negative = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[16:].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    result = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in RE_PARAM.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            value = json.loads(value)
        result[key] = value
    return result


def test_the_chunk_reads_back_in_a1111_with_every_value() -> None:
    plan = {
        "prompt": "a red fox",
        "full_prompt": "a red fox, Ultra HD, 4K, cinematic composition.",
        "negative_prompt": "blurry, lowres",
        "style": "none",
        "seed": 1234567,
        "steps": 50,
        "true_cfg_scale": 4.0,
        "width": 1328,
        "height": 1328,
        "size": "1328x1328",
        "mode": "quality",
        "model": "Qwen/Qwen-Image",
    }
    shown = parse_like_a1111(a1111_parameters(plan))
    assert shown["Prompt"] == "a red fox, Ultra HD, 4K, cinematic composition."
    assert shown["Negative prompt"] == "blurry, lowres"
    assert shown["Steps"] == "50"
    assert shown["Sampler"] == "Euler"
    assert shown["CFG scale"] == "4"
    assert shown["Seed"] == "1234567"
    assert shown["Size"] == "1328x1328"
    assert shown["Model"] == "Qwen/Qwen-Image"
    assert shown["Mode"] == "quality"


def test_values_with_commas_or_colons_are_quoted_and_variations_carry_their_strength() -> None:
    plan = {
        "prompt": "a cat",
        "full_prompt": "a cat",
        "negative_prompt": "",  # no CFG (fast mode): no negative prompt line at all
        "seed": 0,
        "steps": 3,
        "true_cfg_scale": 1.0,
        "size": "64x64",
        "mode": "fast",
        "style": "Watercolor, soft",
        "model": "C:\\models\\qwen, local",
        "strength": 0.35,
        "parent_job_id": "1122",
    }
    text = a1111_parameters(plan)
    assert "Negative prompt:" not in text
    shown = parse_like_a1111(text)
    assert shown["Prompt"] == "a cat" and shown["Negative prompt"] == ""
    assert shown["Model"] == "C:\\models\\qwen, local"
    assert shown["Style"] == "Watercolor, soft"
    assert shown["Denoising strength"] == "0.35"
    assert shown["CFG scale"] == "1" and shown["Seed"] == "0"


def test_a_multi_line_prompt_stays_the_prompt() -> None:
    plan = {"full_prompt": "line one\nNegative prompt: not really", "seed": 1, "steps": 8}
    plan |= {"true_cfg_scale": 1.0, "size": "64x64", "model": "m"}
    shown = parse_like_a1111(a1111_parameters(plan))
    # A prompt line that looks like the negative marker would be misread: it is kept on the
    # prompt's side (joined with a space).
    assert shown["Negative prompt"] == ""
    assert shown["Prompt"] == "line one Negative prompt: not really"
    assert shown["Steps"] == "8"


def test_a_generated_png_carries_both_the_a1111_chunk_and_the_json(
    generator: ImageGenerator,
) -> None:
    request = JobRequest(
        job_id="png-info",
        user_id=1,
        prompt="a lighthouse at dusk",
        negative_prompt="fog",
        style=StyleSpec(),
        seed=99,
        mode=Mode.STANDARD,
        aspect="16:9",
    )
    result = generator.generate(request)
    image = Image.open(io.BytesIO(result.image.png))
    text: dict[str, Any] = image.text  # type: ignore[attr-defined]
    shown = parse_like_a1111(text["parameters"])
    assert shown["Prompt"] == result.full_prompt
    assert shown["Negative prompt"] == "fog"
    assert shown["Steps"] == str(result.steps)
    assert shown["CFG scale"] == f"{result.true_cfg_scale:g}"
    assert shown["Seed"] == "99"
    assert shown["Size"] == f"{result.image.width}x{result.image.height}"
    # The model by name: the PNG is shared, the engine host's folders are nobody's business.
    assert shown["Model"] == public_model_name(generator.model_name)
    assert generator.model_name not in json.dumps(text)
    data = json.loads(text["parameters_json"])
    assert data["seed"] == 99 and data["prompt"] == "a lighthouse at dusk"
