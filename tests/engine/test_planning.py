"""The memory planner's choices for the cards admins have (engine.planning), without a GPU."""

from __future__ import annotations

import pytest

from engine.planning import (
    HEADROOM_GIB,
    QWEN_IMAGE,
    QWEN_IMAGE_WITH_EDIT,
    Card,
    Component,
    Host,
    LoraForm,
    MemoryPlan,
    Placement,
    PlanError,
    WeightFormat,
    WeightsSetting,
    describe,
    expected_seconds,
    plan_memory,
    streamed_plan,
)

HOPPER, ADA, AMPERE = (9, 0), (8, 9), (8, 6)
BIG_HOST = Host(256.0)
DESKTOP = Host(64.0)


def plan(
    gib: float,
    capability: tuple[int, int] = ADA,
    host: Host = DESKTOP,
    *,
    edit: bool = True,
    weights: WeightsSetting = WeightsSetting.AUTO,
) -> MemoryPlan:
    card = Card(f"{gib:g} GiB card", gib, capability)
    return plan_memory(card, host, QWEN_IMAGE_WITH_EDIT if edit else QWEN_IMAGE, weights)


def formats(p: MemoryPlan) -> set[WeightFormat]:
    return {c.weights for c in p.components}


# (usable GiB, compute capability, host RAM) -> transformer format, transformer placement,
# text encoder placement, edit model placement
TABLE = [
    # H200: everything resident in bf16, both transformers.
    (139.0, HOPPER, BIG_HOST, "bf16", "resident", "resident", "resident"),
    # H100 80 GB: resident bf16 as before; the edit model takes turns from pinned RAM.
    (78.0, HOPPER, BIG_HOST, "bf16", "resident", "resident", "swapped"),
    # L40S / RTX 6000 Ada (48 GB, ~45 GiB free): FP8 transformer, everything resident.
    (45.0, ADA, DESKTOP, "fp8", "resident", "resident", "swapped"),
    # A6000 (48 GB Ampere): the same with int8, no FP8 matmuls there.
    (45.0, AMPERE, DESKTOP, "int8", "resident", "resident", "swapped"),
    # RTX 5090 (32 GB): FP8 transformer resident; the text encoder shrinks and partly streams.
    (31.0, (12, 0), DESKTOP, "fp8", "resident", "streamed", "swapped"),
    # RTX 4090 (24 GB): FP8 with a few blocks streamed, or 4-bit; never sequential.
    (23.0, ADA, DESKTOP, {"fp8", "int4"}, {"resident", "streamed"}, "streamed", "swapped"),
    # RTX 3090 (24 GB Ampere): no FP8 anywhere.
    (23.0, AMPERE, DESKTOP, {"int8", "int4"}, {"resident", "streamed"}, "streamed", "swapped"),
    # 16 GB cards: 4-bit, part streamed.
    (15.5, ADA, DESKTOP, "int4", {"resident", "streamed"}, "streamed", "swapped"),
]


@pytest.mark.parametrize(
    ("gib", "capability", "host", "t_fmt", "t_place", "e_place", "edit_place"), TABLE
)
def test_planner_table(
    gib: float,
    capability: tuple[int, int],
    host: Host,
    t_fmt: str | set[str],
    t_place: str | set[str],
    e_place: str,
    edit_place: str,
) -> None:
    p = plan(gib, capability, host)
    transformer = p.transformer
    assert transformer.weights in ({t_fmt} if isinstance(t_fmt, str) else t_fmt)
    assert transformer.placement in ({t_place} if isinstance(t_place, str) else t_place)
    assert p.of(Component.TEXT_ENCODER).placement == e_place
    assert p.of(Component.EDIT_TRANSFORMER).placement == edit_place
    assert p.gpu_gib + HEADROOM_GIB <= gib
    assert p.edit_available
    if capability < ADA:
        assert WeightFormat.FP8 not in formats(p)
    # The text encoder generates text (describe, enhance) only where it is whole on the GPU.
    assert p.text_generation == (p.of(Component.TEXT_ENCODER).placement == Placement.RESIDENT)
    assert p.reasons and p.summary()


def test_bf16_resident_keeps_its_merged_lora_and_compact_weights_use_an_adapter() -> None:
    assert plan(78.0, HOPPER, BIG_HOST).lora == LoraForm.MERGED
    assert plan(45.0).lora == LoraForm.ADAPTER


@pytest.mark.parametrize("capability", [AMPERE, ADA, HOPPER])
def test_every_card_from_16_gib_up_gets_a_plan_that_fits(capability: tuple[int, int]) -> None:
    for gib in (15.0, 16.0, 20.0, 24.0, 32.0, 40.0, 48.0, 64.0, 80.0, 96.0, 141.0):
        p = plan(gib, capability)
        assert p.gpu_gib + HEADROOM_GIB <= gib, gib
        assert p.transformer.placement in (Placement.RESIDENT, Placement.STREAMED), gib
        assert p.host_gib <= DESKTOP.available_gib, gib  # type: ignore[operator]
        # Never slower than the card below it.
        assert expected_seconds(p, "fast") < 4.0, gib


def test_more_memory_never_plans_a_slower_image() -> None:
    sizes = [16.0, 20.0, 24.0, 28.0, 32.0, 40.0, 48.0]
    seconds = [expected_seconds(plan(gib), "fast") for gib in sizes]
    assert seconds == sorted(seconds, reverse=True)


def test_a_card_too_small_for_anything_falls_back_to_sequential_offload() -> None:
    p = plan(8.0)
    assert p.transformer.placement == Placement.SEQUENTIAL
    assert not p.edit_available and not p.text_generation
    assert "layer" in p.reasons[0]


def test_an_80_gib_card_with_little_ram_compacts_instead_of_turning_editing_off() -> None:
    p = plan(78.0, HOPPER, Host(60.0))
    assert p.edit_available and p.weights == WeightFormat.FP8
    assert p.of(Component.EDIT_TRANSFORMER).placement == Placement.RESIDENT
    assert "idle edit model" in p.reasons[0]


def test_too_little_host_ram_for_the_idle_edit_model_turns_editing_off() -> None:
    p = plan(23.0, ADA, Host(24.0))
    assert not p.edit_available
    assert any("editing is off" in reason for reason in p.reasons)


def test_too_little_ram_for_any_plan_is_refused_with_what_it_needs() -> None:
    with pytest.raises(PlanError, match="RAM"):
        plan(8.0, ADA, Host(8.0))


def test_pinned_bf16_never_quantizes() -> None:
    p = plan(45.0, weights=WeightsSetting.BF16)
    assert formats(p) == {WeightFormat.BF16}
    assert p.gpu_gib + HEADROOM_GIB <= 45.0
    assert p.transformer.placement == Placement.STREAMED  # what does not fit streams


def test_pinned_fp8_on_ampere_is_refused_with_the_reason() -> None:
    with pytest.raises(PlanError, match=r"compute capability 8\.9"):
        plan(45.0, AMPERE, weights=WeightsSetting.FP8)


def test_pinned_int4_is_honoured_on_a_big_card() -> None:
    assert plan(78.0, HOPPER, BIG_HOST, weights=WeightsSetting.INT4).weights == WeightFormat.INT4


def test_streamed_mode_streams_both_models() -> None:
    p = streamed_plan(Card("c", 24.0, ADA), QWEN_IMAGE_WITH_EDIT, WeightsSetting.AUTO)
    assert p.transformer.placement == Placement.STREAMED and p.transformer.streamed_share == 1
    assert p.of(Component.TEXT_ENCODER).placement == Placement.STREAMED
    assert p.moved_gib(new_prompt=False, forwards=8) > 8 * 30  # the bf16 blocks, every forward


def test_gib_moved_per_image_counts_the_streamed_parts() -> None:
    p = plan(23.0)
    encoder = p.of(Component.TEXT_ENCODER)
    assert p.moved_gib(new_prompt=True, forwards=0) == pytest.approx(encoder.host_gib)
    assert p.moved_gib(new_prompt=False, forwards=8) == pytest.approx(8 * p.transformer.host_gib)


def test_cpu_plan_keeps_everything_in_main_memory_and_honours_a_pinned_format() -> None:
    cpu = Card("cpu", 0.0, None)
    assert plan_memory(cpu, Host(None)).weights == WeightFormat.BF16
    pinned = plan_memory(cpu, Host(None), QWEN_IMAGE, WeightsSetting.INT8)
    assert pinned.weights == WeightFormat.INT8 and pinned.lora == LoraForm.ADAPTER


def test_describe_names_every_component_memory_and_seconds() -> None:
    card, host = Card("NVIDIA L40S", 45.0, ADA), DESKTOP
    text = describe(plan_memory(card, host, QWEN_IMAGE_WITH_EDIT), card, host)
    assert "Memory plan for NVIDIA L40S: 45 GiB usable" in text
    for line in ("image model   FP8", "text encoder  bf16", "edit model    FP8", "fast      1328²"):
        assert line in text
    assert "GPU memory:" in text and "Copied from RAM per fast image" in text
