"""Full-size Qwen-Image speed benchmark: stock diffusers against the engine, side by side.

Speed does not depend on weight values, so the real-size transformer (20B), VAE and
Qwen2.5-VL-7B text encoder are built with random weights directly on the GPU. The stock cases
call ``QwenImagePipeline`` as the original deployment and the model card do; the engine cases go
through ``ImageGenerator`` (``engine/pipeline.py``) with the same ``engine.optimize.apply`` that
``ImageGenerator.load`` runs, and call ``generate(JobRequest(...))``. Every timed image follows a
warm-up image of the same case (2 steps where the case has more). Results are JSON lines.

    python bench/gpu.py --out bench/results              # everything but start-up (one GPU)
    python bench/gpu.py startup --model DIR --runs 2     # process start -> ready, from disk
    python bench/gpu.py --tiny                           # the same code on the CPU, tiny model

``docs/PERFORMANCE.md`` summarises the results and gives the exact commands.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

logger = logging.getLogger("bench")

PROMPT = "A photo of a red fox sitting in fresh snow at golden hour, highly detailed fur"
LORA_FILE = "bench-lightning-rank64.safetensors"
LORA_RANK = 64  # the Lightning 8-step files are rank 64
TEXT_TOKENS = 40  # text length used for the per-forward timings

# The real Qwen2.5-VL-7B text tower (issue #5) and its vision tower (present in the checkpoint).
TEXT_CONFIG = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 128000,
    "rope_theta": 1000000.0,
    "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
}
VISION_CONFIG = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
}


# ------------------------------------------------------------------------------- recording
class Recorder:
    """Appends one JSON object per measurement; every line carries card and versions."""

    def __init__(self, path: Path, base: dict[str, Any]) -> None:
        self.path = path
        self.base = base
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []

    def __call__(self, case: str, **fields: Any) -> dict[str, Any]:
        row = {"case": case, **fields, **self.base, "ts": dt.datetime.now(dt.UTC).isoformat()}
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
        shown = {k: v for k, v in fields.items() if k not in ("traceback",)}
        logger.info("RESULT %s %s", case, json.dumps(shown, default=str))
        return row


def environment(device: torch.device) -> dict[str, Any]:
    import diffusers
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "run": os.environ.get("BENCH_RUN_ID") or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            card=props.name,
            card_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info.update(card="cpu", cuda=None)
    for name in ("peft", "accelerate", "triton"):
        with contextlib.suppress(Exception):
            info[name] = __import__(name).__version__
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict[str, Any]) -> Iterator[None]:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    yield
    sync(device)
    out["seconds"] = round(time.perf_counter() - started, 4)
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        out["reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)


def guarded(record: Recorder, case: str) -> Callable[[Callable[[], None]], bool]:
    """Run one case; a failure is recorded and the benchmark goes on with the next one."""

    def run(body: Callable[[], None]) -> bool:
        try:
            body()
            return True
        except Exception as exc:
            logger.exception("case %s failed", case)
            record(
                case,
                error=f"{type(exc).__name__}: {str(exc)[:400]}",
                traceback=traceback.format_exc()[-2000:],
            )
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
            return False

    return run


# ------------------------------------------------------------------------ building models
def _init_(name: str, tensor: torch.Tensor, gen: torch.Generator) -> None:
    """Default-like init: U(-1/sqrt(fan_in), +) for matrices, ones for scales, zeros for biases."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("gamma", "scale") or (tensor.ndim == 1 and "norm" in name and leaf == "weight"):
        tensor.fill_(1.0)
    elif leaf == "bias" or leaf == "beta":
        tensor.zero_()
    elif tensor.ndim == 1:
        tensor.fill_(1.0)
    else:
        bound = 1.0 / math.sqrt(max(1, tensor[0].numel()))
        tensor.uniform_(-bound, bound, generator=gen)


@torch.no_grad()
def materialize(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Give every meta parameter real random storage on ``device`` (seconds for 20B on a GPU)."""
    gen = torch.Generator(device=device).manual_seed(0)
    for module_name, module in model.named_modules():
        for pname, param in list(module._parameters.items()):
            if param is None:
                continue
            tensor = torch.empty(param.shape, device=device, dtype=dtype)
            _init_(f"{module_name}.{pname}", tensor, gen)
            module._parameters[pname] = torch.nn.Parameter(tensor, requires_grad=False)
    model.to(device)  # buffers (rotary tables and the like) keep their dtype, as on loading
    model.eval()


def full_text_encoder_config(tokenizer: Any) -> Any:
    """Qwen2.5-VL-7B's config with this tokenizer's ids: the chat tokens, and the vision tokens
    the edit prompt's ``<|image_pad|>`` expansion is matched against (the real checkpoint's
    151655 is not this small tokenizer's id)."""
    from transformers import Qwen2_5_VLConfig

    ids = tokenizer.convert_tokens_to_ids
    special = {
        "bos_token_id": ids("<|im_start|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
    }
    return Qwen2_5_VLConfig(
        text_config={**TEXT_CONFIG, **special},
        vision_config=VISION_CONFIG,
        hidden_size=TEXT_CONFIG["hidden_size"],
        vocab_size=TEXT_CONFIG["vocab_size"],
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        vision_token_id=ids("<|vision_start|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        **special,
    )


def build_full_pipeline(device: torch.device, dtype: torch.dtype, workdir: Path) -> Any:
    """The real Qwen-Image shapes with random weights, built straight on the GPU."""
    from accelerate import init_empty_weights
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from engine.tiny import QWEN_IMAGE_SCHEDULER, _train_tokenizer

    tok_dir = workdir / "tokenizer"
    _train_tokenizer(tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    config = full_text_encoder_config(tokenizer)
    with init_empty_weights():
        transformer = QwenImageTransformer2DModel()  # class defaults are the real shapes
        vae = AutoencoderKLQwenImage()
        text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    for model in (transformer, vae, text_encoder):
        materialize(model, device, dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER)
    pipe = QwenImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny(device: torch.device, dtype: torch.dtype, workdir: Path) -> Any:
    from diffusers import QwenImagePipeline

    from engine.tiny import build_tiny_pipeline

    path = build_tiny_pipeline(workdir / "tiny")
    pipe = QwenImagePipeline.from_pretrained(path, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


# ------------------------------------------------------------------------------- the cases
@dataclasses.dataclass
class Sizes:
    """Pixel sizes standing in for 1328² and 1024² (the tiny run scales them down)."""

    big: int
    small: int
    tiny: bool

    def label(self, side: int) -> str:
        return f"{side}x{side}"


def stock_call(
    pipe: Any, side: int, steps: int, *, cfg: bool, guidance: float | None = None, seed: int = 0
) -> Any:
    kwargs: dict[str, Any] = {
        "prompt": PROMPT,
        "width": side,
        "height": side,
        "num_inference_steps": steps,
        "generator": torch.Generator(device="cpu").manual_seed(seed),
        "output_type": "pil",
    }
    if cfg:
        kwargs.update(negative_prompt=" ", true_cfg_scale=4.0)
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    with torch.inference_mode():
        return pipe(**kwargs).images[0]


def run_stock(
    record: Recorder,
    pipe: Any,
    device: torch.device,
    case: str,
    side: int,
    steps: int,
    *,
    cfg: bool,
    guidance: float | None = None,
    **extra: Any,
) -> None:
    warm_steps = 1 if extra.get("issue_case") == 1 else min(2, steps)  # transfers dominate
    stock_call(pipe, side, warm_steps, cfg=cfg, guidance=guidance)  # warm-up image
    out: dict[str, Any] = {}
    with peak_memory(device, out):
        stock_call(pipe, side, steps, cfg=cfg, guidance=guidance)
    record(
        case,
        size=f"{side}x{side}",
        steps=steps,
        true_cfg=cfg,
        **out,
        per_step_s=round(out["seconds"] / steps, 4),
        **extra,
    )


def forward_inputs(transformer: Any, side: int, device: torch.device, seed: int = 0) -> dict:
    config = transformer.config
    dtype = next(transformer.parameters()).dtype
    grid = side // 16
    gen = torch.Generator(device=device).manual_seed(seed)
    return {
        "hidden_states": torch.randn(
            1, grid * grid, config.in_channels, device=device, dtype=dtype, generator=gen
        ),
        "encoder_hidden_states": torch.randn(
            1, TEXT_TOKENS, config.joint_attention_dim, device=device, dtype=dtype, generator=gen
        ),
        "encoder_hidden_states_mask": None,
        "timestep": torch.full((1,), 0.7, device=device, dtype=dtype),
        "img_shapes": [[(1, grid, grid)]],
        "attention_kwargs": {},
        "return_dict": False,
    }


def time_forward(
    transformer: Any, inputs: dict, device: torch.device, repeats: int = 3
) -> tuple[float, torch.Tensor]:
    """Median seconds of one transformer forward, and its output."""
    with torch.inference_mode():
        out = transformer(**inputs)[0]
        times = []
        for _ in range(repeats):
            sync(device)
            started = time.perf_counter()
            transformer(**inputs)
            sync(device)
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2], out.float().clone()


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def png_pixels(png: bytes) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype("float64")


def image_error(a: bytes, b: bytes) -> float:
    import numpy as np

    x, y = png_pixels(a), png_pixels(b)
    return float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12))


# ---------------------------------------------------------------------------- micro cases
def micro_attention(record: Recorder, transformer: Any, device: torch.device, tokens: int) -> None:
    from engine import optimize

    heads = transformer.config.num_attention_heads
    dim = transformer.config.attention_head_dim
    dtype = next(transformer.parameters()).dtype
    q, k, v = (torch.randn(1, tokens, heads, dim, device=device, dtype=dtype) for _ in range(3))
    _, reference = optimize.time_attention("native", q, k, v, repeats=1)
    flops = 4 * tokens * tokens * dim * heads
    for name in [*optimize._available_attention_backends(), "_native_efficient"]:
        try:
            seconds, out = optimize.time_attention(name, q, k, v, repeats=10)
        except Exception as exc:
            record("attention_backend", backend=name, error=str(exc).splitlines()[0][:200])
            continue
        record(
            "attention_backend",
            backend=name,
            tokens=tokens,
            seconds=round(seconds, 6),
            tflops=round(flops / seconds / 1e12, 1),
            rel_err_vs_native=round(rel_error(out, reference), 6),
        )


def micro_gemm(record: Recorder, device: torch.device, rows: int) -> None:
    """bf16 against rowwise FP8 matmuls for the image stream's GEMM shapes (inputs already
    quantised: the quantisation fuses into the producer when compiled), plus the 8192³
    ceiling."""
    from engine import optimize

    for k, n in ((3072, 3072), (3072, 12288), (12288, 3072), (8192, 8192)):
        m = rows if k != 8192 else 8192
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16) / math.sqrt(k)
        ref = x.double() @ w.double().t()
        wq, ws = optimize.quantize_rows(w)
        ws = ws.reshape(1, -1)
        xq, xs = optimize.quantize_rows(x)
        variants: dict[str, Callable[[], torch.Tensor]] = {"bf16": lambda x=x, w=w: x @ w.t()}
        for fast in (True, False):
            variants[f"fp8_rowwise_fastacc{int(fast)}"] = (
                lambda xq=xq, xs=xs, wq=wq, ws=ws, fast=fast: torch._scaled_mm(
                    xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16,
                    use_fast_accum=fast,
                )
            )  # fmt: skip
        for name, fn in variants.items():
            out = fn()
            sync(device)
            start = time.perf_counter()
            reps = 20
            for _ in range(reps):
                fn()
            sync(device)
            seconds = (time.perf_counter() - start) / reps
            record(
                "gemm",
                variant=name,
                m=m,
                k=k,
                n=n,
                seconds=round(seconds, 7),
                tflops=round(2 * m * k * n / seconds / 1e12, 1),
                rel_err_vs_fp64=round(rel_error(out, ref), 6),
            )


def time_vae(record: Recorder, pipe: Any, device: torch.device, side: int, variant: str) -> None:
    latents = torch.randn(1, 16, 1, side // 8, side // 8, device=device, dtype=pipe.vae.dtype)
    with torch.inference_mode():
        pipe.vae.decode(latents, return_dict=False)
        times = []
        for _ in range(3):
            sync(device)
            t = time.perf_counter()
            pipe.vae.decode(latents, return_dict=False)
            sync(device)
            times.append(time.perf_counter() - t)
    record("vae_decode", variant=variant, size=f"{side}x{side}", seconds=round(sorted(times)[1], 4))


# ------------------------------------------------------------------------------ benchmark
def engine_request(mode: str, seed: int = 1) -> Any:
    from engine.contract import JobRequest, Mode

    return JobRequest(
        job_id=f"bench-{mode}-{seed}",
        user_id=1,
        prompt=PROMPT,
        seed=seed,
        mode=Mode(mode),
        aspect="1:1",
    )


def run_engine_case(
    record: Recorder,
    generator: Any,
    device: torch.device,
    label: str,
    mode: str,
    side: int,
    images: dict[str, bytes],
    **extra: Any,
) -> None:
    from engine.contract import Mode

    generator.max_side = side  # IMAGINE_MAX_SIDE: 1:1 at exactly side x side
    request = engine_request(mode)
    plan = generator.plan(request)
    if plan.width != side:
        raise RuntimeError(f"engine planned {plan.size} for max_side {side}")
    # Warm-up image: same mode and size, 2 steps (fast mode's 8 are already short).
    generator.warm_once(request, plan.steps if mode == Mode.FAST else 2)
    out: dict[str, Any] = {}
    with peak_memory(device, out):
        result = generator.generate(request)
    images[f"{label}:{mode}:{side}"] = result.image.png
    record(
        label,
        mode=mode,
        size=f"{side}x{side}",
        steps=result.steps,
        true_cfg=result.true_cfg_scale > 1,
        **out,
        run_s=round(result.run_s, 4),
        per_step_s=round(result.run_s / result.steps, 4),
        png_bytes=len(result.image.png),
        optimizations=generator.optimizations,
        **extra,
    )


def add_common_arguments(
    parser: argparse.ArgumentParser, *, workdir_help: str | None = None
) -> None:
    """The options every benchmark script shares, spelled once."""
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the CPU")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--workdir", default=None, help=workdir_help)
    parser.add_argument("--compile-cache", default=None)
    parser.add_argument("--no-compile", action="store_true")


def run_script(
    doc: str | None,
    run: Callable[[argparse.Namespace], int],
    argv: list[str] | None,
    *,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """A one-process benchmark script's ``main``: the shared options and ``--fp8``, the
    script's own (``options``), INFO logging, then ``run``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--fp8", action="store_true")
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run(args)


def engine_settings(
    args: argparse.Namespace, workdir: Path, lora_dir: Path, lora_file: str, **extra: Any
) -> Any:
    """``EngineSettings`` for the engine on a benchmark's random pipeline (the tiny one with
    ``--tiny``), with the fast mode's LoRA and the compile options from the command line."""
    from engine.settings import EngineSettings

    return EngineSettings(
        model="bench-random-full" if not args.tiny else str(workdir / "tiny"),
        lightning_lora=str(lora_dir),
        lightning_weight_name=lora_file,
        compile=not args.no_compile,
        compile_cache_dir=Path(args.compile_cache) if args.compile_cache else None,
        **extra,
    )


def engine_generator(
    pipe: Any,
    settings: Any,
    device: torch.device,
    dtype: torch.dtype,
    *,
    max_side: int | None,
    tiny: bool,
    fast_available: bool | None = None,
) -> Any:
    """The engine's ``ImageGenerator`` over an already built pipeline, its LoRA loaded through
    the engine's own code unless the caller did (``fast_available``); speed-ups are not yet
    applied: each script times that itself."""
    from engine.loader import load_lightning
    from engine.pipeline import ImageGenerator
    from engine.settings import MemoryMode

    if fast_available is None:
        fast_available = load_lightning(
            pipe, settings.lightning_lora, settings.lightning_weight_name
        )
    return ImageGenerator(
        pipe,
        settings,
        device=device,
        dtype=dtype,
        memory_mode=MemoryMode.RESIDENT,
        max_side=max_side,
        fast_available=fast_available,
        model_name="random full-size Qwen-Image" if not tiny else "tiny",
    )


def lora_for(record: Recorder, transformer: Any, workdir: Path, tiny: bool) -> tuple[Path, str]:
    """A random LoRA in the Lightning files' layout and rank (the tiny model ships its own)."""
    from engine.tiny import TINY_LORA_DIR, TINY_LORA_FILE, write_random_lora

    if tiny:
        return workdir / "tiny" / TINY_LORA_DIR, TINY_LORA_FILE
    lora_dir = workdir / "lora"
    started = time.perf_counter()
    write_random_lora(transformer, lora_dir / LORA_FILE, rank=LORA_RANK)
    record(
        "lora_file",
        rank=LORA_RANK,
        seconds=round(time.perf_counter() - started, 2),
        bytes=(lora_dir / LORA_FILE).stat().st_size,
    )
    return lora_dir, LORA_FILE


def benchmark(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = Sizes(big=64, small=48, tiny=True) if args.tiny else Sizes(1328, 1024, False)
    env = environment(device)
    out_dir = Path(args.out)
    record = Recorder(out_dir / f"{env['run']}-{'tiny' if args.tiny else 'gpu'}.jsonl", env)
    record("env", **{k: v for k, v in env.items() if k not in ("run",)}, argv=sys.argv[1:])
    selected = set(args.cases.split(",")) if args.cases else None

    def want(name: str) -> bool:
        return selected is None or name in selected

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="qwen-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipe = (build_tiny if args.tiny else build_full_pipeline)(device, dtype, workdir)
    sync(device)
    record(
        "build",
        seconds=round(time.perf_counter() - started, 2),
        transformer_params=param_count(pipe.transformer),
        text_encoder_params=param_count(pipe.text_encoder),
        vae_params=param_count(pipe.vae),
        allocated_gib=round(torch.cuda.memory_allocated() / 2**30, 2)
        if device.type == "cuda"
        else None,
    )
    transformer = pipe.transformer
    big, small = sizes.big, sizes.small
    if args.save:  # start-up case: only the files a deployment has, nothing else
        lora_dir, lora_file = lora_for(record, transformer, workdir, args.tiny)
        guarded(record, "save")(
            lambda: save_pipeline(record, pipe, lora_dir / lora_file, Path(args.save))
        )
        summary(record.rows)
        return 0
    tokens_big = (big // 16) ** 2 + TEXT_TOKENS

    if device.type == "cuda" and want("micro"):
        guarded(record, "attention_backend")(
            lambda: micro_attention(record, transformer, device, tokens_big)
        )
        guarded(record, "gemm")(lambda: micro_gemm(record, device, (big // 16) ** 2))

    # ---- stock diffusers (default attention, eager, no LoRA)
    inputs_big = forward_inputs(transformer, big, device)
    inputs_small = forward_inputs(transformer, small, device)
    reference: dict[str, torch.Tensor] = {}

    def stock_forward() -> None:
        for side, inputs in ((big, inputs_big), (small, inputs_small)):
            seconds, output = time_forward(transformer, inputs, device)
            reference[f"stock:{side}"] = output
            record(
                "forward", variant="stock-eager", size=f"{side}x{side}", seconds=round(seconds, 4)
            )

    if want("forward"):
        guarded(record, "forward")(stock_forward)
    if want("stock"):
        guarded(record, "stock_8steps")(
            lambda: run_stock(record, pipe, device, "stock_8steps", big, 8, cfg=False, issue_case=3)
        )
        guarded(record, "stock_resident_30steps")(
            lambda: run_stock(
                record, pipe, device, "stock_resident_30steps", small, 30, cfg=False, guidance=4.0
            )
        )
        guarded(record, "stock_quality")(
            lambda: run_stock(
                record, pipe, device, "stock_quality", big, 50, cfg=True, issue_case=2
            )
        )
    if want("stock"):
        guarded(record, "vae_decode")(lambda: time_vae(record, pipe, device, big, "stock"))
    if want("offload") and device.type == "cuda":

        def offload() -> None:
            pipe.enable_model_cpu_offload(device=device)
            try:
                run_stock(
                    record,
                    pipe,
                    device,
                    "stock_offload_30steps",
                    small,
                    30,
                    cfg=False,
                    guidance=4.0,
                    issue_case=1,
                )
            finally:
                pipe.remove_all_hooks()
                pipe.to(device)

        guarded(record, "stock_offload_30steps")(offload)

    if not (want("engine") or want("fp8") or want("stock")):
        summary(record.rows)
        return 0

    # ---- the fast mode's LoRA, loaded through the engine's own code
    from engine.loader import load_lightning

    lora_dir, lora_file = lora_for(record, transformer, workdir, args.tiny)
    settings = engine_settings(args, workdir, lora_dir, lora_file, fp8=False, warmup=True)
    fast_available = load_lightning(pipe, settings.lightning_lora, settings.lightning_weight_name)
    record("lora_loaded", fast_available=fast_available)
    if want("stock") and fast_available:

        def stock_lora() -> None:
            from engine.generation import LIGHTNING_SCHEDULER_OVERRIDES

            pipe.enable_lora()
            base_scheduler = pipe.scheduler
            pipe.scheduler = type(base_scheduler).from_config(
                {**dict(base_scheduler.config), **LIGHTNING_SCHEDULER_OVERRIDES}
            )
            try:
                run_stock(
                    record,
                    pipe,
                    device,
                    "stock_lora_8steps",
                    big,
                    8,
                    cfg=False,
                    lora="peft, unfused",
                )
            finally:
                pipe.scheduler = base_scheduler

        guarded(record, "stock_lora_8steps")(stock_lora)

    if not (want("engine") or want("fp8")):
        summary(record.rows)
        return 0

    # ---- the engine
    generator = engine_generator(
        pipe,
        settings,
        device,
        dtype,
        max_side=big if args.tiny else None,
        tiny=args.tiny,
        fast_available=fast_available,
    )
    t0 = time.perf_counter()
    generator._apply_speedups()  # exactly what ImageGenerator.load runs
    if args.tiny:
        tiny_compile(generator)
    sync(device)
    apply_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    generator.warmup()
    sync(device)
    fusion = generator.lora_switch
    record(
        "engine_start",
        apply_s=round(apply_s, 2),
        warmup_s=round(time.perf_counter() - t0, 2),
        optimizations=generator.optimizations,
        lora_exact=getattr(fusion, "exact", None),
        lora_changed=getattr(fusion, "changed", None),
        lora_relative_change=getattr(fusion, "relative_change", None),
    )

    def engine_forward(variant: str) -> None:
        generator._set_mode(False)  # base weights, as the stock forward had
        for side, inputs in ((big, inputs_big), (small, inputs_small)):
            seconds, output = time_forward(transformer, inputs, device)
            reference[f"{variant}:{side}"] = output
            fields: dict[str, Any] = {}
            if f"stock:{side}" in reference:
                fields["rel_err_vs_stock"] = round(rel_error(output, reference[f"stock:{side}"]), 6)
            if variant != "engine-bf16" and f"engine-bf16:{side}" in reference:
                fields["rel_err_vs_engine_bf16"] = round(
                    rel_error(output, reference[f"engine-bf16:{side}"]), 6
                )
            record(
                "forward",
                variant=variant,
                size=f"{side}x{side}",
                seconds=round(seconds, 4),
                **fields,
            )

    if want("forward"):
        guarded(record, "forward")(lambda: engine_forward("engine-bf16"))

    def lora_switching() -> None:
        if fusion is None:
            return
        generator._set_mode(False)
        before = [d.weight.detach().clone() for d in fusion.deltas[:8]]
        times = []
        for fast in (True, False, True, False):
            sync(device)
            t = time.perf_counter()
            fusion(fast)
            sync(device)
            times.append(time.perf_counter() - t)
        changed = sum(
            int((a != d.weight).sum()) for a, d in zip(before, fusion.deltas[:8], strict=True)
        )
        record(
            "lora_switch",
            fuse_s=round(times[0], 4),
            unfuse_s=round(times[1], 4),
            fuse2_s=round(times[2], 4),
            unfuse2_s=round(times[3], 4),
            changed_after_two_cycles=changed,
            linears=len(fusion.deltas),
            fp8_swaps=len(fusion.swaps),
        )
        generator._lora_active = False

    guarded(record, "lora_switch")(lora_switching)

    images: dict[str, bytes] = {}
    order = [
        ("fast", big),
        ("standard", small),
        ("quality", big),
        ("standard", big),
        ("quality", small),
        ("fast", small),
    ]
    if want("engine"):
        for mode, side in order:
            guarded(record, "engine")(
                lambda mode=mode, side=side: run_engine_case(
                    record, generator, device, "engine", mode, side, images, fp8=False
                )
            )

    def per_image_parts() -> None:
        from engine.generation import png_with_parameters

        png = images.get(f"engine:fast:{big}") or next(iter(images.values()), None)
        if png is None:
            return
        from PIL import Image

        image = Image.open(io.BytesIO(png)).convert("RGB")
        t = time.perf_counter()
        data = png_with_parameters(image, {"prompt": PROMPT})
        record(
            "png_encode",
            variant="engine",
            seconds=round(time.perf_counter() - t, 4),
            bytes=len(data),
            note="random-weight output is noise",
        )
        buffer = io.BytesIO()
        t = time.perf_counter()
        image.save(buffer, format="PNG", compress_level=6)
        record(
            "png_encode",
            variant="pillow-level6",
            seconds=round(time.perf_counter() - t, 4),
            bytes=buffer.tell(),
            note="the encoder the engine used before",
        )
        time_vae(record, pipe, device, big, "engine")
        encode = pipe.encode_prompt
        raw = getattr(encode, "encode", encode)
        with torch.inference_mode():
            raw(prompt=PROMPT + " warm", device=device, max_sequence_length=512)
            sync(device)
            t = time.perf_counter()
            raw(prompt=PROMPT + " timing", device=device, max_sequence_length=512)
            sync(device)
        record("text_encode", seconds=round(time.perf_counter() - t, 4))

    guarded(record, "per_image_parts")(per_image_parts)

    # ---- FP8 (IMAGINE_FP8=1): same engine, converted and recompiled
    if want("fp8") and (device.type == "cuda" or args.tiny):
        from engine import optimize

        def to_fp8() -> None:
            t = time.perf_counter()
            optimize.uncompile_transformer(transformer)
            torch._dynamo.reset()
            if want("forward") and "stock:" + str(big) in reference:
                # Eager again: isolates what the LoRA merge/unmerge fixed point does to the
                # base model's output (same kernels as the stock forward).
                generator._set_mode(False)
                seconds, output = time_forward(transformer, inputs_big, device)
                record(
                    "forward",
                    variant="engine-eager-bf16",
                    size=f"{big}x{big}",
                    seconds=round(seconds, 4),
                    rel_err_vs_stock=round(rel_error(output, reference[f"stock:{big}"]), 6),
                )
            converted = optimize.enable_fp8(generator)
            if device.type == "cuda" and settings.compile:
                if not optimize.compile_and_check(transformer, device):
                    raise RuntimeError("FP8 compile failed")
            elif args.tiny:
                tiny_compile(generator)
            generator.optimizations = [*generator.optimizations, "fp8-rowwise"]
            generator.warmup()
            sync(device)
            record(
                "fp8_start",
                converted=converted,
                seconds=round(time.perf_counter() - t, 2),
                allocated_gib=round(torch.cuda.memory_allocated() / 2**30, 2)
                if device.type == "cuda"
                else None,
            )

        if guarded(record, "fp8_start")(to_fp8):
            if want("forward"):
                guarded(record, "forward")(lambda: engine_forward("engine-fp8"))
            guarded(record, "lora_switch")(lora_switching)
            fp8_order = [
                ("quality", big),
                ("fast", big),
                ("standard", small),
                ("standard", big),
                ("fast", small),
                ("quality", small),
            ]
            for mode, side in fp8_order:
                guarded(record, "engine_fp8")(
                    lambda mode=mode, side=side: run_engine_case(
                        record, generator, device, "engine_fp8", mode, side, images, fp8=True
                    )
                )
            for key, png in images.items():
                label, mode, side = key.split(":")
                if label == "engine_fp8" and f"engine:{mode}:{side}" in images:
                    error = image_error(png, images[f"engine:{mode}:{side}"])
                    record(
                        "fp8_image_error",
                        mode=mode,
                        size=f"{side}x{side}",
                        rel_err_vs_bf16=round(error, 5),
                        note="same request and seed; random weights",
                    )

    summary(record.rows)
    return 0


def save_pipeline(record: Recorder, pipe: Any, lora: Path, target: Path) -> None:
    """The stock pipeline in diffusers format plus the LoRA file, as a deployment has them."""
    from engine.tiny import TINY_MARKER

    started = time.perf_counter()
    pipe.save_pretrained(target)
    lora_target = target / "lightning"
    lora_target.mkdir(parents=True, exist_ok=True)
    os.replace(lora, lora_target / lora.name)
    marker = lora.parent.parent / TINY_MARKER
    if marker.is_file():  # the tiny run: keep the marker so the engine caps its sizes
        (target / TINY_MARKER).write_text(marker.read_text())
    os.sync()
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    record(
        "save",
        seconds=round(time.perf_counter() - started, 1),
        gib=round(size / 2**30, 2),
        path=str(target),
    )


def tiny_compile(generator: Any) -> None:
    """On the CPU the engine does not compile; trace the blocks anyway (no graph breaks)."""
    from engine import optimize

    transformer = generator.pipe.transformer
    optimize.uncompile_transformer(transformer)
    torch._dynamo.reset()
    optimize.install_real_rotary()
    optimize.compile_transformer(transformer, backend="eager")
    optimize.smoke_forward(transformer, generator.device)


def summary(rows: list[dict[str, Any]]) -> None:
    """A short table last, so the end of the output carries the numbers."""
    lines = []
    for row in rows:
        case = row["case"]
        if "seconds" not in row or case in ("env",):
            if "error" in row:
                lines.append(f"{case:24s} ERROR {row['error'][:100]}")
            continue
        what = " ".join(
            str(row[k])
            for k in ("variant", "backend", "mode", "size", "steps", "m", "k", "n")
            if k in row
        )
        extra = " ".join(
            f"{k}={row[k]}"
            for k in (
                "peak_gib",
                "tflops",
                "rel_err_vs_stock",
                "rel_err_vs_engine_bf16",
                "rel_err_vs_native",
                "rel_err_vs_fp64",
            )
            if k in row
        )
        lines.append(f"{case:24s} {what:32s} {row['seconds']:>9} s  {extra}")
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------------------- start-up
def ready(args: argparse.Namespace) -> int:
    """Child process: the engine's real start (load from disk, optimise, compile, warm up)."""
    t_import = time.perf_counter()
    from engine.pipeline import ImageGenerator
    from engine.settings import EngineSettings

    model = Path(args.model)
    lora = model / "lightning"
    weight = next(iter(sorted(p.name for p in lora.glob("*.safetensors"))), "missing")
    settings = EngineSettings(
        model=str(model),
        lightning_lora=str(lora),
        lightning_weight_name=weight,
        compile_cache_dir=Path(args.compile_cache),
        fp8=args.fp8,
        warmup=True,
    )
    t_load = time.perf_counter()
    generator = ImageGenerator.load(settings)
    t_warm = time.perf_counter()
    generator.warmup()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    done = time.perf_counter()
    first: dict[str, Any] = {}
    if args.first_image:  # "to the end": the first user's image, default mode, PNG included
        from engine.contract import JobRequest

        request = JobRequest(job_id="first", user_id=1, prompt=PROMPT, seed=1)
        result = generator.generate(request)
        first = {"first_image_s": round(time.perf_counter() - done, 2), "mode": str(result.mode),
                 "steps": result.steps, "size": f"{result.image.width}x{result.image.height}",
                 }  # fmt: skip
    print(
        "READY "
        + json.dumps(
            {
                "import_s": round(t_load - t_import, 2),
                "load_and_optimize_s": round(t_warm - t_load, 2),
                "warmup_s": round(done - t_warm, 2),
                "info": dataclasses.asdict(generator.info()),
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                **first,
            }
        ),
        flush=True,
    )
    return 0


STARTUP_MILESTONES = (
    "memory mode",
    "loaded ",
    "speed-up",
    "compile cache",
    "warm-up done",
    "LoRA fusion",
    "Lightning LoRA",
    "engine.prefetch:",
)


def drop_page_cache(model: Path) -> str:
    """Make the next start read the weights from the disk, as after a reboot: drop the whole
    page cache where we may (root, writable /proc), else evict the model's files one by one
    (``POSIX_FADV_DONTNEED`` drops a file's clean pages without privileges)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "dropped"
    except OSError as exc:
        why = str(exc)
    evicted = 0
    for path in sorted(model.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                evicted += path.stat().st_size
            finally:
                os.close(fd)
    return f"model files evicted ({evicted / 2**30:.1f} GiB; drop_caches: {why[:80]})"


def startup(args: argparse.Namespace) -> int:
    """Parent: time process start -> ready for ``--runs`` fresh processes sharing one cache."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    record = Recorder(Path(args.out) / f"{env['run']}-startup.jsonl", env)
    cache = Path(args.compile_cache)
    drop = {int(n) for n in args.drop_caches.split(",") if n.strip()}
    plain = {int(n) for n in args.without_prefetch.split(",") if n.strip()}
    for run in range(1, args.runs + 1):
        cache_files = sum(1 for _ in cache.rglob("*")) if cache.exists() else 0
        page_cache = "warm"
        if run in drop:  # as after a reboot: the weights come from the disk itself
            page_cache = drop_page_cache(Path(args.model))
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "ready",
            *(["--first-image"] if args.first_image else []),
            "--model",
            args.model,
            "--compile-cache",
            str(cache),
        ] + (["--fp8"] if args.fp8 else [])
        started = time.perf_counter()
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "IMAGINE_PREFETCH_WEIGHTS": "false" if run in plain else "true",
            },
        )
        ready_s = None
        details: dict[str, Any] = {}
        tail: list[str] = []
        assert proc.stdout is not None
        milestones: list[str] = []
        for line in proc.stdout:
            tail = [*tail[-40:], line.rstrip()]
            if any(key in line for key in STARTUP_MILESTONES):
                elapsed = time.perf_counter() - started
                milestones.append(f"{elapsed:6.1f}s {line.strip()[24:][:200]}")
            if line.startswith("READY "):
                ready_s = time.perf_counter() - started
                details = json.loads(line[6:])
            elif args.verbose:
                print(line, end="", flush=True)
        proc.wait()
        if ready_s is None:
            record("startup", start=run, error=f"exit {proc.returncode}", tail="\n".join(tail))
            print("\n".join(tail))
            continue
        first_image_s = details.get("first_image_s")
        record(
            "startup",
            start=run,  # "run" is the run id every row carries
            # with --first-image the child answers after that image: seconds is to its PNG
            seconds=round(ready_s, 2),
            ready_s=round(ready_s - (first_image_s or 0.0), 2),
            fp8=args.fp8,
            page_cache=page_cache,
            prefetch=run not in plain,
            milestones=milestones,
            cache_files_before=cache_files,
            **details,
        )
    summary(record.rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "command", nargs="?", default="bench", choices=["bench", "startup", "ready"]
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--cases",
        default=None,
        help="comma list of: micro, forward, stock, offload, engine, fp8 (default all)",
    )
    parser.add_argument("--save", default=None, help="save the stock pipeline + LoRA here")
    parser.add_argument("--model", default=None, help="startup/ready: saved pipeline folder")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--fp8", action="store_true")
    parser.add_argument(
        "--drop-caches",
        default="",
        help="startup: runs (1-based) that start with the OS page "
        "cache dropped, i.e. weights read from disk (needs root)",
    )
    parser.add_argument(
        "--without-prefetch",
        default="",
        help="startup: runs (1-based) that start with IMAGINE_PREFETCH_WEIGHTS=false",
    )
    parser.add_argument(
        "--first-image",
        action="store_true",
        help="startup/ready: after warm-up, time the first default-mode image as well",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout
    )
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "ready":
        return ready(args)
    if args.command == "startup":
        if not args.model or not args.compile_cache:
            parser.error("startup needs --model and --compile-cache")
        return startup(args)
    return benchmark(args)


if __name__ == "__main__":
    raise SystemExit(main())
