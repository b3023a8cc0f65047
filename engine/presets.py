"""Aspect ratios, modes and built-in styles: the knowledge of how Qwen-Image wants to be called.

No torch here, so the bot can list choices without loading the GPU stack.
"""

from __future__ import annotations

import dataclasses
import math
import re

from engine.contract import Mode, StyleSpec


@dataclasses.dataclass(frozen=True, slots=True)
class Aspect:
    key: str
    label: str
    ratio: tuple[int, int]
    native: tuple[int, int]  # (width, height) the model was trained at


# Qwen-Image's native resolutions (model card). Sides are multiples of 16.
ASPECTS: dict[str, Aspect] = {
    a.key: a
    for a in (
        Aspect("1:1", "1:1 square", (1, 1), (1328, 1328)),
        Aspect("16:9", "16:9 landscape", (16, 9), (1664, 928)),
        Aspect("9:16", "9:16 portrait", (9, 16), (928, 1664)),
        Aspect("4:3", "4:3 landscape", (4, 3), (1472, 1104)),
        Aspect("3:4", "3:4 portrait", (3, 4), (1104, 1472)),
        Aspect("3:2", "3:2 landscape", (3, 2), (1584, 1056)),
        Aspect("2:3", "2:3 portrait", (2, 3), (1056, 1584)),
    )
}
DEFAULT_ASPECT = "1:1"

# The pipeline packs 2x2 latent patches over an 8x VAE: image sides must be multiples of 16.
SIZE_MULTIPLE = 16


def image_size(aspect: str, max_side: int | None = None) -> tuple[int, int]:
    """(width, height) for an aspect.

    With ``max_side`` unset the model's native size is used. With it set (tests, CPU dry runs)
    the size is the largest one whose ratio is *exactly* the aspect, whose sides are multiples
    of 16 and whose long side fits ``max_side`` (never below the smallest exact size).
    """
    spec = ASPECTS[aspect]
    if max_side is None:
        return spec.native
    a, b = spec.ratio
    g = math.gcd(a, b)
    a, b = a // g, b // g
    k = max(1, max_side // (SIZE_MULTIPLE * max(a, b)))
    return SIZE_MULTIPLE * a * k, SIZE_MULTIPLE * b * k


@dataclasses.dataclass(frozen=True, slots=True)
class ModePreset:
    mode: Mode
    steps: int
    true_cfg_scale: float
    description: str


MODES: dict[Mode, ModePreset] = {
    Mode.QUALITY: ModePreset(Mode.QUALITY, 50, 4.0, "best detail, 50 steps with true CFG"),
    Mode.STANDARD: ModePreset(Mode.STANDARD, 30, 4.0, "balanced, 30 steps with true CFG"),
    Mode.FAST: ModePreset(Mode.FAST, 8, 1.0, "Lightning LoRA, 8 steps, no CFG"),
}

# The model card's "positive magic" for English prompts; appended in the CFG modes.
POSITIVE_MAGIC = ", Ultra HD, 4K, cinematic composition."

# Qwen-Image needs *some* negative prompt for true CFG to run at all; a single space is the
# model card's neutral choice.
NEUTRAL_NEGATIVE = " "


def model_prompts(
    style: StyleSpec,
    prompt: str,
    negative: str | None,
    *,
    true_cfg: bool,
    positive_magic: bool = True,
) -> tuple[str, str]:
    """``(prompt, negative)`` exactly as the model reads them: the style's template applied,
    the quality suffix in the true-CFG modes, and the member's negative joined with the
    style's (or the neutral single space). Without true CFG no negative prompt is used: "".

    The one definition of this text: the engine renders from it and the bot shows it
    (/styles preview, Details).
    """
    full = style.apply(prompt)
    if not true_cfg:
        return full, ""
    if positive_magic:
        full = full.rstrip(" .,") + POSITIVE_MAGIC
    negatives = [n.strip() for n in (negative, style.negative) if n]
    return full, ", ".join(n for n in negatives if n) or NEUTRAL_NEGATIVE


BUILTIN_STYLES: dict[str, StyleSpec] = {
    s.name: s
    for s in (
        StyleSpec("none", "{prompt}", ""),
        StyleSpec(
            "photorealistic",
            "{prompt}, photorealistic, natural lighting, sharp focus, 35mm photograph, high detail",
            "cartoon, illustration, painting, drawing, lowres, blurry, oversaturated",
        ),
        StyleSpec(
            "anime",
            "{prompt}, anime style, cel shading, vibrant colors, clean line art, key visual",
            "photorealistic, photo, 3d render, lowres, blurry, deformed",
        ),
        StyleSpec(
            "digital-art",
            "{prompt}, digital art, highly detailed, artstation, concept art, vivid colors",
            "photo, lowres, blurry, jpeg artifacts",
        ),
        StyleSpec(
            "oil-painting",
            "{prompt}, oil painting on canvas, visible brush strokes, rich texture, "
            "classical composition",
            "photo, digital art, 3d render, lowres, flat colors",
        ),
        StyleSpec(
            "watercolor",
            "{prompt}, watercolor painting, soft washes, paper texture, delicate edges",
            "photo, 3d render, harsh lines, oversaturated, lowres",
        ),
        StyleSpec(
            "pixel-art",
            "{prompt}, pixel art, 16-bit, crisp pixels, limited palette, retro game sprite",
            "blurry, smooth gradients, photo, 3d render, anti-aliasing",
        ),
        StyleSpec(
            "cinematic",
            "{prompt}, cinematic film still, dramatic lighting, shallow depth of field, "
            "anamorphic, color graded",
            "cartoon, illustration, lowres, flat lighting, oversaturated",
        ),
        StyleSpec(
            "3d-render",
            "{prompt}, 3d render, octane render, physically based materials, studio lighting, "
            "high detail",
            "photo, painting, sketch, lowres, blurry",
        ),
        StyleSpec(
            "comic",
            "{prompt}, comic book style, bold ink outlines, halftone shading, dynamic panel",
            "photo, 3d render, blurry, lowres",
        ),
        StyleSpec(
            "line-art",
            "{prompt}, clean black and white line art, ink drawing, minimal shading",
            "color, photo, 3d render, blurry, messy lines",
        ),
    )
}
DEFAULT_STYLE = "none"

# Seeds are drawn and accepted in [0, MAX_SEED]; a torch CPU generator makes them reproducible
# on any device.
MAX_SEED = 2**32 - 1

# Longest prompt the bot accepts (Discord's option limit is 6000; Qwen-Image reads up to 1024
# tokens, which 1500 characters stays well inside).
MAX_PROMPT_CHARS = 1500

# Vary buttons: img2img strength, the share of the schedule that is re-run from the stored image.
# Qwen-Image's schedule is shifted towards high noise (exponential shift, mu ~0.83 at 1328²), so a
# strength s starts from a noise level sigma well above s; in flow matching the noised input is
# (1 - sigma) * image + sigma * noise, so 1 - sigma is how much of the source survives.
# Measured on the real scheduler config (engine.img2img.img2img_steps):
#   standard 30 steps: 0.35 -> 11 steps from sigma 0.55; 0.70 -> 21 steps from sigma 0.83
#   quality 50 steps:  0.35 -> 18 steps from sigma 0.55; 0.70 -> 35 steps from sigma 0.84
#   fast (Lightning, shift 3, 8 steps): 0.35 -> 3 steps from sigma 0.64; 0.70 -> 6 from 0.90
# Subtle keeps about 45% of the source signal: composition, colours and subjects stay, texture
# and small details are redrawn (0.30 starts at sigma 0.47, keeping over half the signal: too
# close to the source to read as a variation). Strong keeps about 17%: the coarse layout and
# palette survive while subjects and details are re-imagined (0.75 starts at sigma 0.88, where
# little of the source is left to vary). Each also costs only that share of a full image's steps.
VARY_SUBTLE_STRENGTH = 0.35
VARY_STRONG_STRENGTH = 0.7


# A Hugging Face repository id ("Qwen/Qwen-Image") is public; anything else is a path on the host
# that runs the engine, which is nobody's business in Discord, a gallery page or a shared PNG.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
MODEL_NAME_CHARS = 100


def public_model_name(source: str | None) -> str:
    """The model as others may see it: a hub id as is, a local path as its last component
    ("/models/qwen" -> "qwen"), "custom model" when a path has none. The engine writes this,
    never the path, into results and PNG chunks; the bot uses it for what older rows hold."""
    text = (source or "").strip()
    if not (_HUB_ID.fullmatch(text) and ".." not in text):
        last = re.split(r"[\\/]", text.rstrip("/\\"))[-1].strip()
        if not last or last in (".", "..", "~") or last.endswith(":"):
            return "custom model"
        text = last
    return text if len(text) <= MODEL_NAME_CHARS else text[: MODEL_NAME_CHARS - 1] + "…"
