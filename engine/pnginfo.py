"""The PNG's ``parameters`` text chunk as AUTOMATIC1111 and Civitai read it ("PNG Info").

Those tools (and most image sites and viewers that copy them) look for one ``tEXt`` chunk named
``parameters`` holding three parts: the prompt, a line starting with ``Negative prompt:``, and a
last line of ``key: value`` pairs separated by commas::

    a red fox, Ultra HD, 4K, cinematic composition.
    Negative prompt: blurry
    Steps: 50, Sampler: Euler, CFG scale: 4, Seed: 7, Size: 1328x1328, Model: Qwen/Qwen-Image

A value holding a comma, a colon or a line break is JSON-quoted, as A1111 itself writes it. The
full parameters stay in the PNG as JSON (``parameters_json``) and one chunk per key, for tools
of our own. No imaging library here: this only formats text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

# A plan's PNG parameters (``Plan.png_parameters``), by name.
Parameters = Mapping[str, str | int | float]

# Qwen-Image samples with diffusers' FlowMatchEulerDiscreteScheduler: Euler steps on the flow.
SAMPLER = "Euler"
NEGATIVE_MARKER = "Negative prompt:"


def a1111_parameters(parameters: Parameters) -> str:
    """The ``parameters`` chunk for a generation's parameters (as ``ImageGenerator.plan``
    builds them); keys that are missing are left out."""
    prompt = str(parameters.get("full_prompt") or parameters.get("instruction") or "")
    prompt = prompt or str(parameters.get("prompt") or "")
    lines = [_prompt_text(prompt)]
    negative = str(parameters.get("negative_prompt") or "").strip()
    if negative:
        lines.append(f"{NEGATIVE_MARKER} {_prompt_text(negative)}")
    pairs: list[tuple[str, object]] = [
        ("Steps", parameters.get("steps")),
        ("Sampler", SAMPLER if "steps" in parameters else None),
        ("CFG scale", _number(parameters.get("true_cfg_scale"))),
        ("Seed", parameters.get("seed")),
        ("Size", parameters.get("size") or _size(parameters)),
        ("Model", parameters.get("model")),
        ("Weights", parameters.get("weights") if parameters.get("weights") != "bf16" else None),
        ("Denoising strength", _number(parameters.get("strength"))),
        ("Mode", parameters.get("mode")),
        ("Style", _style(parameters.get("style"))),
    ]
    lines.append(", ".join(f"{key}: {_quote(str(v))}" for key, v in pairs if v is not None))
    return "\n".join(lines)


def _prompt_text(text: str) -> str:
    """One prompt on its own lines; a line that would read as the negative-prompt marker (or
    as a parameter line) is folded into the one before, so readers split it correctly."""
    out: list[str] = []
    for line in text.strip().splitlines():
        if out and line.lstrip().startswith(NEGATIVE_MARKER):
            out[-1] = f"{out[-1]} {line.strip()}"
        else:
            out.append(line)
    return "\n".join(out)


def _quote(value: str) -> str:
    """A1111's rule: a value with a separator in it is written as a JSON string."""
    if "," in value or ":" in value or "\n" in value or '"' in value:
        return json.dumps(value, ensure_ascii=False)
    return value


def _number(value: str | int | float | None) -> str | None:
    return None if value is None else f"{float(value):g}"


def _size(parameters: Parameters) -> str | None:
    width, height = parameters.get("width"), parameters.get("height")
    return f"{width}x{height}" if width and height else None


def _style(name: object) -> str | None:
    return None if name in (None, "", "none") else str(name)
