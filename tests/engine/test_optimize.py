"""engine.optimize on the CPU with the tiny pipeline: every GPU speed-up that can run here."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import optimize
from engine.contract import JobRequest, Mode
from engine.generation import png_with_parameters
from engine.pipeline import ImageGenerator
from engine.settings import EngineSettings


def request(mode: Mode, **overrides: Any) -> JobRequest:
    fields: dict[str, Any] = {"job_id": "o1", "user_id": 1, "prompt": "a red fox", "seed": 11}
    fields.update(overrides)
    return JobRequest(mode=mode, **fields)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float64)


@pytest.fixture
def own_generator(tiny_settings: EngineSettings) -> Iterator[ImageGenerator]:
    """A generator of its own: these tests convert and compile its transformer."""
    generator = ImageGenerator.load(tiny_settings)
    yield generator
    optimize.uncompile_transformer(generator.pipe.transformer)
    torch._dynamo.reset()


def test_cpu_gets_the_device_independent_speedups(generator: ImageGenerator) -> None:
    assert generator.optimizations == ["prompt-cache", "vae-2d", "lora-fused"]
    assert generator.info().optimizations == tuple(generator.optimizations)
    assert isinstance(generator.lora_switch, optimize.LoraFusion)


def test_lora_switch_restores_the_base_weights_bit_for_bit(
    own_generator: ImageGenerator,
) -> None:
    transformer = own_generator.pipe.transformer
    base = {name: p.detach().clone() for name, p in transformer.named_parameters()}
    standard = own_generator.generate(request(Mode.STANDARD))
    fast = own_generator.generate(request(Mode.FAST))
    assert own_generator.lora_switch.fused
    merged = transformer.transformer_blocks[0].attn.to_q.weight
    assert not torch.equal(merged, base["transformer_blocks.0.attn.to_q.weight"])
    for _ in range(3):
        again = own_generator.generate(request(Mode.STANDARD))
        assert again.image.png == standard.image.png
        assert own_generator.generate(request(Mode.FAST)).image.png == fast.image.png
    own_generator.generate(request(Mode.STANDARD))
    for name, param in transformer.named_parameters():
        assert torch.equal(param, base[name]), name
    assert fast.image.png != standard.image.png


def test_over_budget_fusion_settles_on_a_fixed_point(own_generator: ImageGenerator) -> None:
    """Without correction lists the first merge/unmerge re-rounds some weights once; after
    that, switching never changes another bit."""
    fusion = own_generator.lora_switch
    assert fusion.exact and not fusion.fused  # so the weights are the loaded ones
    weights = [d.weight for d in fusion.deltas]
    loaded = [w.detach().clone() for w in weights]
    fusion.exact, fusion.changed = True, 0
    fusion.prepare(budget_bytes=0)
    assert not fusion.exact
    assert all(d.fix_index is None for d in fusion.deltas)
    assert 0 < fusion.relative_change < 1e-3
    settled = [w.detach().clone() for w in weights]
    assert any(not torch.equal(a, b) for a, b in zip(settled, loaded, strict=True))
    for _ in range(3):
        fusion(True)
        fusion(False)
    assert all(torch.equal(w, s) for w, s in zip(weights, settled, strict=True))


def test_fp8_linear_is_close_to_the_full_precision_one() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48)
    alt = layer.weight.detach() * 1.5
    fp8 = optimize.FP8Linear.from_linear(layer, alt_weight=alt)
    assert fp8.weight.dtype == optimize.FP8_DTYPE and fp8.weight_scale.shape == (1, 48)
    x = torch.randn(3, 37, 64)
    with torch.no_grad():
        expected = layer(x)
        got = fp8(x)
        assert got.shape == expected.shape
        assert float((got - expected).norm() / expected.norm()) < 0.05
        fp8.swap()
        scaled = torch.nn.functional.linear(x, alt, layer.bias)
        assert float((fp8(x) - scaled).norm() / scaled.norm()) < 0.05
        fp8.swap()
        assert torch.equal(fp8(x), got)


def test_fp8_engine_keeps_both_modes_and_stays_close(own_generator: ImageGenerator) -> None:
    bf16 = {m: own_generator.generate(request(m)).image.png for m in (Mode.STANDARD, Mode.FAST)}
    converted = optimize.enable_fp8(own_generator)
    blocks = len(own_generator.pipe.transformer.transformer_blocks)
    assert converted == len(optimize.FP8_TARGETS) * blocks
    fusion = own_generator.lora_switch
    assert len(fusion.swaps) == converted  # fast mode swaps FP8 weight sets
    for mode, reference in bf16.items():
        png = own_generator.generate(request(mode)).image.png
        error = np.linalg.norm(pixels(png) - pixels(reference)) / np.linalg.norm(pixels(reference))
        assert error < 0.02, (mode, error)
    fast = own_generator.generate(request(Mode.FAST)).image.png
    own_generator.generate(request(Mode.STANDARD))
    assert own_generator.generate(request(Mode.FAST)).image.png == fast


def test_compiled_blocks_trace_whole_with_one_graph_for_all_sizes_and_modes(
    own_generator: ImageGenerator,
) -> None:
    """fullgraph=True proves there is no graph break; one graph means no recompile between
    aspects, prompt lengths, the smoke forward and fast/standard switches (FP8 included)."""
    from torch._dynamo.utils import counters

    optimize.enable_fp8(own_generator)
    optimize.install_real_rotary()
    torch._dynamo.reset()
    counters.clear()
    transformer = own_generator.pipe.transformer
    optimize.compile_transformer(transformer, backend="eager")
    optimize.smoke_forward(transformer, own_generator.device)
    for aspect, mode in (("1:1", Mode.FAST), ("16:9", Mode.STANDARD), ("2:3", Mode.FAST)):
        own_generator.generate(request(mode, aspect=aspect, prompt=f"a fox, {aspect}"))
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]


def test_real_rotary_matches_the_complex_one() -> None:
    from diffusers.models.transformers import transformer_qwenimage as module

    optimize.install_real_rotary()
    stock = module._imagine_stock_rotary
    torch.manual_seed(0)
    x = torch.randn(2, 50, 4, 64, dtype=torch.bfloat16)
    freqs = torch.polar(torch.ones(50, 32), torch.randn(50, 32))
    got = optimize.rotary_real(x, freqs, use_real=False)
    assert got.dtype == x.dtype
    assert torch.equal(got, stock(x, freqs, use_real=False))
    assert module.apply_rotary_emb_qwen is optimize.rotary_real


def test_single_frame_vae_decodes_like_the_3d_one(tiny_model_dir: Path) -> None:
    from diffusers import AutoencoderKLQwenImage

    vae = AutoencoderKLQwenImage.from_pretrained(tiny_model_dir / "vae").eval()
    latents = torch.randn(1, 16, 1, 6, 10)
    with torch.inference_mode():
        stock = vae.decode(latents, return_dict=False)[0]
        assert optimize.install_vae_single_frame(vae) > 0
        fast = vae.decode(latents, return_dict=False)[0]
        video = torch.randn(1, 16, 3, 6, 10)  # several frames still take the 3D path
        assert vae.decode(video, return_dict=False)[0].shape[2] > 1
    assert fast.shape == stock.shape
    assert float((fast - stock).norm() / stock.norm()) < 1e-5


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_png_encoder_is_lossless_and_keeps_text(mode: str) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:420]
    smooth = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1)
    noisy = (smooth + rng.integers(0, 8, smooth.shape)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(noisy).convert(mode)
    params = {"prompt": "un renard roux 🦊 {braces}", "seed": 7, "style": "none"}
    data = png_with_parameters(image, params)
    back = Image.open(io.BytesIO(data))
    back.load()
    expected = image.convert("RGB") if mode == "P" else image
    assert back.mode == expected.mode and back.size == image.size
    assert np.array_equal(np.asarray(back), np.asarray(expected))
    assert back.text["prompt"] == params["prompt"] and back.text["seed"] == "7"
    assert json.loads(back.text["parameters_json"]) == params
    reference = io.BytesIO()
    expected.save(reference, format="PNG", compress_level=6)
    assert len(data) < 1.5 * reference.tell()


def test_png_encoder_splits_large_images_into_one_valid_stream() -> None:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (700, 900, 3), dtype=np.uint8))
    data = optimize.encode_png(image, [])
    assert len(image.tobytes()) // (256 * 1024) > 1  # more than one compressed piece
    back = Image.open(io.BytesIO(data))
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_prompt_cache_encodes_each_prompt_once(
    own_generator: ImageGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = own_generator.pipe.encode_prompt
    assert isinstance(cache, optimize.PromptCache)
    calls: list[object] = []
    original = cache.encode

    def encode(**kwargs: Any) -> Any:
        calls.append(kwargs["prompt"])
        return original(**kwargs)

    monkeypatch.setattr(cache, "encode", encode)
    first = own_generator.generate(request(Mode.STANDARD, prompt="a lighthouse at dusk"))
    again = own_generator.generate(request(Mode.STANDARD, prompt="a lighthouse at dusk", seed=3))
    # The prompt and the neutral negative are encoded once; the reroll reuses both.
    assert len(calls) == 2
    assert first.image.png != again.image.png  # another seed, same embeddings


def test_prompt_cache_evicts_the_oldest_entry() -> None:
    seen: list[str] = []

    def encode(**kwargs: Any) -> str:
        seen.append(kwargs["prompt"])
        return kwargs["prompt"].upper()

    cache = optimize.PromptCache(encode, size=2)
    assert [cache(prompt=p) for p in ("a", "b", "a", "c", "b")] == ["A", "B", "A", "C", "B"]
    assert seen == ["a", "b", "c", "b"]  # "b" was evicted by "c"
    assert cache(prompt_embeds=torch.zeros(1), prompt="x") == "X"  # embeddings bypass it


def test_attention_choice_needs_a_clear_gain(monkeypatch: pytest.MonkeyPatch) -> None:
    class Transformer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.config = type("C", (), {"num_attention_heads": 2, "attention_head_dim": 8})
            self.chosen: list[str] = []

        def set_attention_backend(self, name: str) -> None:
            self.chosen.append(name)

    def fake(timings: dict[str, float], wrong: set[str] = frozenset()) -> Any:
        def time_attention(name: str, q: Any, k: Any, v: Any, repeats: int = 5) -> Any:
            return timings[name], q + (1.0 if name in wrong else 0.0)

        return time_attention

    monkeypatch.setattr(
        optimize.attention, "_available_attention_backends", lambda: ["_x", "native"]
    )
    model = Transformer()
    monkeypatch.setattr(optimize.attention, "time_attention", fake({"_x": 0.95, "native": 1.0}))
    assert optimize.pick_attention_backend(model, torch.device("cpu"), tokens=16) == "native"
    monkeypatch.setattr(optimize.attention, "time_attention", fake({"_x": 0.5, "native": 1.0}))
    assert optimize.pick_attention_backend(model, torch.device("cpu"), tokens=16) == "_x"
    assert model.chosen == ["_x"]
    monkeypatch.setattr(
        optimize.attention, "time_attention", fake({"_x": 0.5, "native": 1.0}, {"_x"})
    )
    assert optimize.pick_attention_backend(model, torch.device("cpu"), tokens=16) == "native"


def test_compile_cache_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    default = optimize.configure_compile_cache(None)
    assert default == (tmp_path / "xdg" / "qwen-imagine-bot" / "torch-compile").resolve()
    assert default.is_dir()
    chosen = optimize.configure_compile_cache(tmp_path / "cc")
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(chosen) == str(tmp_path / "cc")
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(tmp_path / "cc")
