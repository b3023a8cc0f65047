"""The memory plan: where each model component lives and in what weight format, decided once at
load from the card the admin actually has (project issue #21).

Pure decisions, no torch: ``plan_memory`` takes the card (free memory, compute capability),
the host's free RAM and the models configured, fits every candidate placement to the GPU and the
host, and keeps the one described below. ``engine.placing`` carries the plan out;
``python -m engine plan`` prints it for this card or a named size.

How it chooses (figures in docs/PERFORMANCE.md, "Every card from 16 GB up"):

- everything resident in bf16 whenever it fits (~63 GiB): the reference image, unchanged.
- otherwise every combination of formats (transformer bf16, 8-bit or 4-bit; text encoder bf16
  or 8-bit; VAE whole or tiled) is fitted, streaming what does not fit (``engine.streaming``):
  the text encoder's layers first, since it runs once per new prompt (the prompt cache serves
  rerolls and the neutral negative), then the transformer's blocks, spread through the model so
  that each copy overlaps the compute of the blocks before it. The fastest estimate wins
  (``expected_seconds``: the format's measured forward, the copies at the host link's speed);
  a near tie goes to the more precise weights.
- 8-bit is FP8 where the card has FP8 matmuls (compute capability 8.9+: Ada, Hopper,
  Blackwell), which also run faster than bf16; int8 elsewhere (Ampere). Compact weights change
  the image for the same seed a little, so the PNG records the format and ``IMAGINE_WEIGHTS``
  pins one.
- sequential offload (every layer fetched when it runs) only when nothing else fits.
"""

from __future__ import annotations

import dataclasses
import enum

GIB = 2**30


class WeightFormat(enum.StrEnum):
    BF16 = "bf16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def bytes_per_param(self) -> float:
        # int4: two values per byte plus one bf16 scale per group of 64.
        return {"bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 2 / 64}[self.value]

    @property
    def label(self) -> str:
        return {"bf16": "bf16", "fp8": "FP8", "int8": "int8", "int4": "4-bit"}[self.value]


class WeightsSetting(enum.StrEnum):
    """``IMAGINE_WEIGHTS``: ``auto`` keeps bf16 wherever it fits; a format pins it."""

    AUTO = "auto"
    BF16 = "bf16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"


class Placement(enum.StrEnum):
    RESIDENT = "resident"
    # Part or all of its blocks stream from pinned host memory (``engine.streaming``): the next
    # streamed block is copied on a side CUDA stream while the blocks before it compute.
    STREAMED = "streamed"
    # Kept in pinned host memory and swapped in whole while it is used (the idle transformer).
    SWAPPED = "swapped"
    SEQUENTIAL = "sequential"
    ABSENT = "absent"


class LoraForm(enum.StrEnum):
    """How fast mode's Lightning LoRA is held."""

    NONE = "none"
    # bf16 weights: merged in place when fast mode starts, taken out when a CFG mode starts.
    MERGED = "merged"
    # Compact weights: the low-rank pair runs beside each linear while fast mode is on (one
    # weight set; merging into FP8/int weights could not be taken out again exactly).
    ADAPTER = "adapter"


class Component(enum.StrEnum):
    TRANSFORMER = "transformer"
    TEXT_ENCODER = "text_encoder"
    VAE = "vae"
    EDIT_TRANSFORMER = "edit_transformer"


@dataclasses.dataclass(frozen=True, slots=True)
class Card:
    """The accelerator as far as planning goes. ``capability`` is None on a CPU."""

    name: str
    usable_gib: float
    capability: tuple[int, int] | None
    # Where the figure came from: "free memory", "IMAGINE_GPU_MEMORY_GIB".
    source: str = "free memory"

    @property
    def fp8(self) -> bool:
        return self.capability is not None and self.capability >= (8, 9)

    @property
    def cuda(self) -> bool:
        return self.capability is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Host:
    available_gib: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Models:
    """Parameter counts (billions) of what is configured; the defaults are Qwen-Image's."""

    transformer_b: float = 20.43
    text_encoder_b: float = 8.29
    vae_b: float = 0.127
    lora_b: float = 0.59  # the Lightning files: rank 64 on every block linear
    edit_transformer_b: float = 0.0  # 20.43 when /edit is configured


QWEN_IMAGE = Models()
QWEN_IMAGE_WITH_EDIT = dataclasses.replace(QWEN_IMAGE, edit_transformer_b=20.43)

# GPU memory a 1328² image needs beyond the weights (measured peaks minus weights, rounded up):
# one transformer forward at batch 1 (true CFG runs its two halves one after the other), and the
# VAE decode, whole or in tiles.
TRANSFORMER_WORK_GIB = 2.5
VAE_DECODE_GIB = 4.5
VAE_TILED_GIB = 1.0
# Pinned staging and the layers in flight while a component streams.
STREAM_WORK_GIB = 1.0
# Left free for the allocator's fragmentation and the CUDA libraries' workspaces.
HEADROOM_GIB = 1.0
# The bot's own process on the host (Python, torch, tokenizers, the queue) beside pinned weights.
HOST_PROCESS_GIB = 6.0
# One 1024² edit with three references needs more than a text-to-image forward.
EDIT_WORK_GIB = 3.0


# Share of a component that can stream: the repeated blocks (the transformer's 60 hold all but
# 0.3 % of it; the text encoder's layers about 85 %, its embeddings and output head stay).
STREAMABLE = {"transformer": 0.99, "text_encoder": 0.85}
# Host-to-GPU GiB/s assumed when the loader has not measured the link: a PCIe 4.0 x16 desktop.
DEFAULT_LINK_GIB_S = 22.0


@dataclasses.dataclass(frozen=True, slots=True)
class ComponentPlan:
    component: Component
    placement: Placement
    weights: WeightFormat
    gpu_gib: float
    host_gib: float
    # The share of the component's streamable blocks that streams (0: resident, 1: all).
    streamed_share: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryPlan:
    """What ``engine.placing`` does with each component, and why."""

    components: tuple[ComponentPlan, ...]
    lora: LoraForm
    vae_tiling: bool
    gpu_gib: float
    host_gib: float
    usable_gib: float
    # Text generation on the text encoder (/describe, prompt enhancement) needs it resident:
    # streamed, every new token would move the streamed layers over PCIe again.
    text_generation: bool
    edit_available: bool
    reasons: tuple[str, ...]
    link_gib_s: float = DEFAULT_LINK_GIB_S

    def of(self, component: Component) -> ComponentPlan:
        for plan in self.components:
            if plan.component == component:
                return plan
        return ComponentPlan(component, Placement.ABSENT, WeightFormat.BF16, 0.0, 0.0)

    @property
    def transformer(self) -> ComponentPlan:
        return self.of(Component.TRANSFORMER)

    @property
    def weights(self) -> WeightFormat:
        """The transformer's format: what changes the image, so what the PNG records."""
        return self.transformer.weights

    def moved_gib(self, new_prompt: bool = True, forwards: int = 1) -> float:
        """GiB copied from host to GPU for one image: the streamed part of the text encoder per
        new prompt, of the transformer per forward (a cap cannot show a slower PCIe link: this
        figure can)."""
        streams = (Placement.STREAMED, Placement.SEQUENTIAL)
        encoder, transformer = self.of(Component.TEXT_ENCODER), self.transformer
        moved = encoder.host_gib if new_prompt and encoder.placement in streams else 0.0
        if transformer.placement in streams:
            moved += transformer.host_gib * forwards
        return moved

    def summary(self) -> str:
        """One line a server admin understands: what sits where, and the GPU memory it uses."""
        parts = []
        for c in self.components:
            if c.placement == Placement.ABSENT or c.component == Component.VAE:
                continue
            where = _WHERE[c.placement]
            if c.placement == Placement.STREAMED and c.streamed_share < 1:
                where = f"on the GPU, {c.streamed_share:.0%} streamed from RAM"
            parts.append(f"{_NAMES[c.component]} {c.weights.label} {where}")
        return f"{', '.join(parts)} ({self.gpu_gib:.0f} of {self.usable_gib:.0f} GiB GPU)"


_NAMES = {
    Component.TRANSFORMER: "image model",
    Component.TEXT_ENCODER: "text encoder",
    Component.VAE: "VAE",
    Component.EDIT_TRANSFORMER: "edit model",
}
_WHERE = {
    Placement.RESIDENT: "on the GPU",
    Placement.STREAMED: "streamed from RAM",
    Placement.SWAPPED: "in RAM, swapped in when used",
    Placement.SEQUENTIAL: "fetched layer by layer (slow)",
    Placement.ABSENT: "-",
}


class PlanError(ValueError):
    """The settings ask for something this card or host cannot do; the message says what."""


def _size(params_b: float, fmt: WeightFormat) -> float:
    return params_b * 1e9 * fmt.bytes_per_param / GIB


def _capability(card: Card) -> str:
    if card.capability is None:
        return "no CUDA"
    major, minor = card.capability
    return f"{major}.{minor}"


def _formats(
    card: Card, setting: WeightsSetting
) -> tuple[tuple[WeightFormat, ...], tuple[WeightFormat, ...]]:
    """(transformer formats, text encoder formats) the search may use on this card."""
    if setting == WeightsSetting.FP8 and not card.fp8:
        raise PlanError(
            "IMAGINE_WEIGHTS=fp8 needs FP8 matmuls (compute capability 8.9+: Ada, Hopper, "
            f"Blackwell); {card.name} has {_capability(card)}. Use int8, int4 or auto."
        )
    bf16, four = WeightFormat.BF16, WeightFormat.INT4
    eight = WeightFormat.FP8 if card.fp8 else WeightFormat.INT8
    if setting == WeightsSetting.BF16:
        return (bf16,), (bf16,)
    if setting == WeightsSetting.AUTO:
        return (bf16, eight, four), (bf16, eight)
    pinned = WeightFormat(setting.value)
    encoder = pinned if pinned != four else eight
    return (pinned,), (bf16, encoder)


# Quality order, for ties in the speed estimate: bf16 first, 4-bit last.
_PRECISION = {WeightFormat.BF16: 0, WeightFormat.FP8: 1, WeightFormat.INT8: 1, WeightFormat.INT4: 2}


def plan_memory(
    card: Card,
    host: Host,
    models: Models = QWEN_IMAGE,
    weights: WeightsSetting = WeightsSetting.AUTO,
    *,
    lightning: bool = True,
    link_gib_s: float = DEFAULT_LINK_GIB_S,
) -> MemoryPlan:
    """The fastest placement that fits the card and the host (everything resident in bf16
    whenever that fits), with the reasons for it."""
    if not card.cuda:
        return _cpu_plan(card, models, lightning, weights)
    t_formats, e_formats = _formats(card, weights)
    fitting: list[tuple[float, MemoryPlan]] = []
    for t_fmt in t_formats:
        for e_fmt in e_formats:
            if _PRECISION[e_fmt] > _PRECISION[t_fmt] + 1:
                continue
            for tiled in (False, True):
                plan = _fit(card, host, models, t_fmt, e_fmt, tiled, lightning, link_gib_s)
                if plan is None:
                    continue
                seconds = expected_seconds(plan, "fast")
                # A near tie goes to the more precise weights, then to the whole VAE decode.
                rank = _PRECISION[t_fmt] * 0.04 + _PRECISION[e_fmt] * 0.01 + tiled * 0.01
                fitting.append((seconds * (1 + rank), plan))
    if not fitting:
        return _sequential_plan(card, host, models, lightning, weights)
    # Where the host's RAM cannot hold the idle edit model beside bf16 weights, a plan that
    # keeps editing on wins over one that turns it off.
    editing = [item for item in fitting if item[1].edit_available]
    bf16_fits = any(_all_bf16_resident(plan) for _score, plan in fitting)
    fitting = editing or fitting
    for _score, plan in fitting:
        if _all_bf16_resident(plan):
            return dataclasses.replace(
                plan, reasons=("everything fits on the GPU in bf16", *plan.reasons)
            )
    best = min(fitting, key=lambda item: item[0])[1]
    return dataclasses.replace(best, reasons=(_why(best, card, bf16_fits), *best.reasons))


def _all_bf16_resident(plan: MemoryPlan) -> bool:
    return not plan.vae_tiling and all(
        c.weights == WeightFormat.BF16 and c.placement == Placement.RESIDENT
        for c in plan.components
        if c.component in (Component.TRANSFORMER, Component.TEXT_ENCODER)
    )


def _why(plan: MemoryPlan, card: Card, bf16_fits: bool) -> str:
    t = plan.transformer
    encoder = plan.of(Component.TEXT_ENCODER)
    parts = [
        "bf16 fits, but its idle edit model would not fit in the host's free RAM"
        if bf16_fits
        else f"bf16 does not fit in {card.usable_gib:.0f} GiB"
    ]
    if t.weights != WeightFormat.BF16:
        parts.append(f"the image model runs with {t.weights.label} weights")
    if t.streamed_share:
        parts.append(f"{t.streamed_share:.0%} of its blocks stream from RAM (copied while the "
                     "blocks before them compute)")  # fmt: skip
    if encoder.weights != WeightFormat.BF16:
        parts.append(f"the text encoder is {encoder.weights.label}")
    if encoder.streamed_share:
        parts.append(f"{encoder.streamed_share:.0%} of the text encoder's layers stream (it runs "
                     "once per new prompt)")  # fmt: skip
    if plan.vae_tiling:
        parts.append("the VAE decodes in tiles")
    return "; ".join(parts) + ": the fastest estimate that fits"


def _fit(
    card: Card,
    host: Host,
    models: Models,
    t_fmt: WeightFormat,
    e_fmt: WeightFormat,
    tiled: bool,
    lightning: bool,
    link_gib_s: float,
) -> MemoryPlan | None:
    transformer = _size(models.transformer_b, t_fmt)
    encoder = _size(models.text_encoder_b, e_fmt)
    vae = _size(models.vae_b, WeightFormat.BF16)
    lora_form = LoraForm.NONE
    lora = 0.0
    if lightning:
        lora_form = LoraForm.MERGED if t_fmt == WeightFormat.BF16 else LoraForm.ADAPTER
        lora = _size(models.lora_b, WeightFormat.BF16)
    work = TRANSFORMER_WORK_GIB + (VAE_TILED_GIB if tiled else VAE_DECODE_GIB)
    room = card.usable_gib - HEADROOM_GIB - vae - lora - work
    streamed_t = streamed_e = 0.0
    if transformer + encoder > room:
        # Stream the text encoder first (once per new prompt), then the transformer's blocks.
        need = transformer + encoder - (room - STREAM_WORK_GIB)
        streamed_e = min(need, encoder * STREAMABLE["text_encoder"])
        streamed_t = min(need - streamed_e, transformer * STREAMABLE["transformer"])
        if need - streamed_e - streamed_t > 1e-6:
            return None
        if streamed_t:  # a bf16 LoRA cannot be merged into weights that live on the host
            lora_form = LoraForm.ADAPTER if lightning else LoraForm.NONE
    streaming = bool(streamed_t or streamed_e)
    gpu = transformer + encoder - streamed_t - streamed_e + vae + lora + work
    gpu += STREAM_WORK_GIB if streaming else 0.0
    host_needed = streamed_t + streamed_e
    if host.available_gib is not None and host_needed + HOST_PROCESS_GIB > host.available_gib:
        return None
    components = [
        _component(Component.TRANSFORMER, t_fmt, transformer, streamed_t,
                   transformer * STREAMABLE["transformer"]),
        _component(Component.TEXT_ENCODER, e_fmt, encoder, streamed_e,
                   encoder * STREAMABLE["text_encoder"]),
        ComponentPlan(Component.VAE, Placement.RESIDENT, WeightFormat.BF16, vae, 0.0),
    ]  # fmt: skip
    reasons: list[str] = []
    edit_available = True
    if models.edit_transformer_b:
        edit = _size(models.edit_transformer_b, t_fmt)
        left = card.usable_gib - HEADROOM_GIB - gpu
        free_host = (
            None if host.available_gib is None
            else host.available_gib - HOST_PROCESS_GIB - host_needed
        )  # fmt: skip
        # Swapping needs pinned RAM for both: the idle edit model, and the text-to-image
        # model's resident part while an edit runs.
        swap_host = edit + transformer - streamed_t
        if not streaming and edit + EDIT_WORK_GIB <= left:
            components.append(
                ComponentPlan(Component.EDIT_TRANSFORMER, Placement.RESIDENT, t_fmt, edit, 0.0)
            )
            gpu += edit
        elif free_host is not None and swap_host > free_host:
            edit_available = False
            reasons.append(
                f"editing is off: taking turns with the image model needs {swap_host:.0f} GiB "
                f"of free RAM and {max(free_host, 0):.0f} GiB is left"
            )
        else:
            share = min(1.0, streamed_t / (transformer * STREAMABLE["transformer"]))
            components.append(
                ComponentPlan(Component.EDIT_TRANSFORMER, Placement.SWAPPED, t_fmt, 0.0, edit,
                              share)
            )  # fmt: skip
            host_needed += swap_host
            reasons.append(
                "the two transformers take turns on the GPU; the idle one waits in RAM"
                + (f" (each streams {share:.0%} of its blocks)" if share else "")
            )
    text_generation = not streamed_e
    if not text_generation:
        reasons.append(
            "describe and prompt enhancement are off: they would copy the streamed text "
            "encoder layers again for every word"
        )
    return MemoryPlan(
        components=tuple(components),
        lora=lora_form,
        vae_tiling=tiled,
        gpu_gib=round(gpu, 1),
        host_gib=round(host_needed, 1),
        usable_gib=card.usable_gib,
        text_generation=text_generation,
        edit_available=edit_available,
        reasons=tuple(reasons),
        link_gib_s=link_gib_s,
    )


def _component(
    component: Component, fmt: WeightFormat, size: float, streamed: float, streamable: float
) -> ComponentPlan:
    if not streamed:
        return ComponentPlan(component, Placement.RESIDENT, fmt, size, 0.0)
    share = min(1.0, streamed / streamable)
    return ComponentPlan(component, Placement.STREAMED, fmt, size - streamed, streamed, share)


def _sequential_plan(
    card: Card, host: Host, models: Models, lightning: bool, weights: WeightsSetting
) -> MemoryPlan:
    """Nothing else fits: every layer fetched when it runs. Refuses instead where the host
    cannot hold the weights either."""
    t_formats, _e = _formats(card, weights)
    fmt = t_formats[-1]
    transformer = _size(models.transformer_b, fmt)
    encoder = _size(models.text_encoder_b, WeightFormat.BF16)
    host_needed = transformer + encoder
    if host.available_gib is not None and host_needed + HOST_PROCESS_GIB > host.available_gib:
        raise PlanError(
            f"{card.name} has {card.usable_gib:.0f} GiB usable and the host "
            f"{host.available_gib:.0f} GiB of free RAM: Qwen-Image needs at least "
            f"{host_needed + HOST_PROCESS_GIB:.0f} GiB of RAM to run from host memory."
        )
    components = (
        ComponentPlan(Component.TRANSFORMER, Placement.SEQUENTIAL, fmt, 0.0, transformer, 1.0),
        ComponentPlan(Component.TEXT_ENCODER, Placement.SEQUENTIAL, WeightFormat.BF16, 0.0,
                      encoder, 1.0),
        ComponentPlan(Component.VAE, Placement.SEQUENTIAL, WeightFormat.BF16, 0.0, 0.0),
    )  # fmt: skip
    lora = LoraForm.ADAPTER if lightning else LoraForm.NONE
    return MemoryPlan(
        components=components,
        lora=lora,
        vae_tiling=True,
        gpu_gib=round(VAE_TILED_GIB + TRANSFORMER_WORK_GIB + STREAM_WORK_GIB, 1),
        host_gib=round(host_needed, 1),
        usable_gib=card.usable_gib,
        text_generation=False,
        edit_available=False,
        reasons=(
            f"only {card.usable_gib:.0f} GiB usable: every layer is fetched when it runs "
            "(tens of seconds per image); editing is off",
        ),
    )


def _cpu_plan(card: Card, models: Models, lightning: bool, weights: WeightsSetting) -> MemoryPlan:
    """On a CPU (the tiny model, tests) everything is in main memory already; a pinned format
    still applies (each runs here through its weight-only path), so a dry run shows it."""
    fmt = WeightFormat.BF16 if weights == WeightsSetting.AUTO else WeightFormat(weights.value)
    components = [
        ComponentPlan(Component.TRANSFORMER, Placement.RESIDENT, fmt, 0.0, 0.0),
        ComponentPlan(Component.TEXT_ENCODER, Placement.RESIDENT, WeightFormat.BF16, 0.0, 0.0),
        ComponentPlan(Component.VAE, Placement.RESIDENT, WeightFormat.BF16, 0.0, 0.0),
    ]
    if models.edit_transformer_b:
        components.append(
            ComponentPlan(Component.EDIT_TRANSFORMER, Placement.RESIDENT, fmt, 0.0, 0.0)
        )
    lora = LoraForm.NONE
    if lightning:
        lora = LoraForm.MERGED if fmt == WeightFormat.BF16 else LoraForm.ADAPTER
    return MemoryPlan(
        components=tuple(components),
        lora=lora,
        vae_tiling=False,
        gpu_gib=0.0,
        host_gib=0.0,
        usable_gib=0.0,
        text_generation=True,
        edit_available=True,
        reasons=(f"{card.name}: the models stay in main memory",),
    )


def streamed_plan(card: Card, models: Models, weights: WeightsSetting) -> MemoryPlan:
    """``IMAGINE_MEMORY_MODE=streamed``: both big models stream block by block, whatever fits."""
    fmt = WeightFormat.BF16 if weights == WeightsSetting.AUTO else WeightFormat(weights.value)
    if card.cuda:
        _formats(card, weights)  # refuses FP8 on a card without FP8 matmuls
    transformer = _size(models.transformer_b, fmt)
    encoder = _size(models.text_encoder_b, WeightFormat.BF16)
    vae = _size(models.vae_b, WeightFormat.BF16)
    t_stream = transformer * STREAMABLE["transformer"]
    e_stream = encoder * STREAMABLE["text_encoder"]
    components = [
        ComponentPlan(Component.TRANSFORMER, Placement.STREAMED, fmt, transformer - t_stream,
                      t_stream, 1.0),
        ComponentPlan(Component.TEXT_ENCODER, Placement.STREAMED, WeightFormat.BF16,
                      encoder - e_stream, e_stream, 1.0),
        ComponentPlan(Component.VAE, Placement.RESIDENT, WeightFormat.BF16, vae, 0.0),
    ]  # fmt: skip
    host = t_stream + e_stream
    if models.edit_transformer_b:
        edit = _size(models.edit_transformer_b, fmt)
        components.append(
            ComponentPlan(Component.EDIT_TRANSFORMER, Placement.STREAMED, fmt, 0.0, edit, 1.0)
        )
        host += edit
    gpu = transformer - t_stream + encoder - e_stream + vae
    return MemoryPlan(
        components=tuple(components),
        lora=LoraForm.ADAPTER,
        vae_tiling=True,
        gpu_gib=round(gpu + STREAM_WORK_GIB + TRANSFORMER_WORK_GIB + VAE_TILED_GIB, 1),
        host_gib=round(host, 1),
        usable_gib=card.usable_gib,
        text_generation=False,
        edit_available=True,
        reasons=("IMAGINE_MEMORY_MODE=streamed: the models stream from RAM block by block",),
    )


# Seconds per transformer forward at 1328² on one H100 (compiled, resident; docs/PERFORMANCE.md,
# "Every card from 16 GB up"), by weight format: bf16 and FP8 measured; int8 and 4-bit expand
# their weights inside the forward.
FORWARD_S = {
    WeightFormat.BF16: 0.250,
    WeightFormat.FP8: 0.199,
    WeightFormat.INT8: 0.262,
    WeightFormat.INT4: 0.280,
}
# What one image costs beside the forwards: the text encoder for a new prompt, the VAE decode
# and the PNG, resident.
IMAGE_OVERHEAD_S = 0.35
# The part of the shorter of (compute, copies) that streaming fails to hide.
OVERLAP_LOSS = 0.3
# Transformer forwards per image: fast 8 steps, standard 30 and quality 50 with true CFG (two
# forwards a step); an edit at 1024² with one reference costs about what a 1328² forward does.
MODE_FORWARDS = {"fast": 8, "standard": 60, "quality": 100, "edit": 80}


def expected_seconds(plan: MemoryPlan, mode: str) -> float:
    """An estimate of one image's seconds for a new prompt: the forwards at the format's
    measured speed, with each forward's streamed blocks copied while the blocks before them
    compute (so a forward takes the longer of the two), plus the streamed text encoder."""
    link = plan.link_gib_s
    forwards = MODE_FORWARDS[mode]
    component = plan.transformer
    if mode == "edit":
        edit = plan.of(Component.EDIT_TRANSFORMER)
        component = edit if edit.placement != Placement.ABSENT else component
    forward = FORWARD_S[component.weights]
    streamed = component.host_gib
    if component.component == Component.EDIT_TRANSFORMER:  # its RAM holds all of it
        streamed *= component.streamed_share
    copies = streamed / link
    if component.placement == Placement.SEQUENTIAL:
        forward += copies
    elif component.streamed_share:
        # Copies overlap the compute of the blocks before them, not perfectly.
        forward = max(forward, copies) + OVERLAP_LOSS * min(forward, copies)
    seconds = forwards * forward + IMAGE_OVERHEAD_S
    seconds += plan.moved_gib(new_prompt=True, forwards=0) / link
    if component.placement == Placement.SWAPPED:
        seconds += component.host_gib * (1 - component.streamed_share) / link  # swapped in
    return seconds


def describe(plan: MemoryPlan, card: Card, host: Host) -> str:
    """``python -m engine plan``: the plan, the memory it takes, and what it costs per image."""
    capability = "no CUDA" if card.capability is None else f"compute capability {_capability(card)}"
    ram = "unknown" if host.available_gib is None else f"{host.available_gib:.0f} GiB"
    lines = [
        f"Memory plan for {card.name}: {card.usable_gib:.0f} GiB usable ({card.source}), "
        f"{capability}; host RAM free: {ram}",
        "",
    ]
    for c in plan.components:
        where = _WHERE[c.placement]
        if c.placement == Placement.STREAMED and c.streamed_share < 1:
            where = f"{c.streamed_share:.0%} streamed from RAM"
        lines.append(
            f"  {_NAMES[c.component]:<13} {c.weights.label:<6} {where:<30} "
            f"{c.gpu_gib:5.1f} GiB GPU {c.host_gib:5.1f} GiB RAM"
        )
    lora = {
        LoraForm.NONE: "none",
        LoraForm.MERGED: "merged into the bf16 weights when fast mode starts",
        LoraForm.ADAPTER: "an adapter beside the weights (one weight set)",
    }[plan.lora]
    fast = MODE_FORWARDS["fast"]
    lines += [
        f"  fast mode's LoRA: {lora}",
        f"  VAE: {'decoded in tiles' if plan.vae_tiling else 'decoded whole'}",
        "",
        f"GPU memory: {plan.gpu_gib:.1f} of {plan.usable_gib:.1f} GiB; RAM for weights kept "
        f"off the GPU: {plan.host_gib:.1f} GiB",
        f"Copied from RAM per fast image: {plan.moved_gib(True, fast):.1f} GiB for a new "
        f"prompt, {plan.moved_gib(False, fast):.1f} GiB for a reroll",
        f"Describe / prompt enhancement: {'available' if plan.text_generation else 'off'}; "
        f"editing: {'available' if plan.edit_available else 'off'}",
        "",
        "Why:",
        *(f"  - {reason}" for reason in plan.reasons),
        "",
        f"Expected seconds per image, new prompt (H100 compute; RAM to GPU at "
        f"{plan.link_gib_s:.0f} GiB/s):",
    ]
    for mode in MODE_FORWARDS:
        if mode == "edit" and plan.of(Component.EDIT_TRANSFORMER).placement == Placement.ABSENT:
            continue
        if mode == "edit" and not plan.edit_available:
            continue
        size = "1024²" if mode == "edit" else "1328²"
        lines.append(f"  {mode:<9} {size}: ~{expected_seconds(plan, mode):.1f} s")
    return "\n".join(lines)
