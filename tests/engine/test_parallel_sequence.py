"""Ulysses for fast mode (``engine.parallel.sequence``) on two gloo ranks of the CPU.

diffusers' context parallelism wants an accelerator; the check runs it on the CPU by telling it
there is one "device" per process. The image is 4x4 latent patches (an even share each, which
gloo's all_gather needs) and the text 15 tokens: the joint attention's shares are 16 and 15,
and rank 0's text share (8) equals its image share, the case that hung on two H200s when one
rank answered and the other asked. Every share is answered from the shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def check(model: str, result_path: str) -> None:
    """Runs on each rank: the forward with sequence parallelism off, on, off, on."""
    import types

    import torch
    import torch.distributed as dist
    from diffusers import QwenImagePipeline

    from engine.parallel import CfgSplit, sequence

    dist.init_process_group("gloo")
    torch.accelerator.device_count = lambda: 1  # one "device" per process, for diffusers
    rank = dist.get_rank()
    pipe = QwenImagePipeline.from_pretrained(model, dtype=torch.float32)
    transformer = pipe.transformer
    gen = torch.Generator().manual_seed(0)
    h, w = 4, 4
    kwargs = {
        "hidden_states": torch.randn(1, h * w, 64, generator=gen),
        "encoder_hidden_states": torch.randn(1, 15, 32, generator=gen),
        "encoder_hidden_states_mask": None,
        "timestep": torch.full((1,), 0.5),
        "img_shapes": [[(1, h, w)]],
        "attention_kwargs": {},
        "return_dict": False,
    }
    with torch.inference_mode():
        reference = transformer(**kwargs)[0]
    CfgSplit(transformer, rank)
    fast = sequence.FastSequence(types.SimpleNamespace(pipe=pipe, optimizations=[]))
    results = []
    for state in ("off", "on", "off", "on"):
        getattr(fast, state)()
        before = fast.sizes.answered
        with torch.inference_mode():
            out = transformer(**kwargs)[0]
        error = float((out - reference).abs().max())
        results.append([state, error, fast.sizes.answered - before, fast.sizes.asked_peers])
    Path(result_path).with_suffix(f".rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()
    # As the followers do (engine.parallel.launch): skip the interpreter's finalization. A gloo
    # worker thread can drop its last all_gather's tensors after the caller has the result;
    # when that lands during finalization its GIL request ends the thread inside a C++
    # destructor and the process aborts ("terminate called without an active exception",
    # about one run in eight on two cores).
    os._exit(0)


def check_lengths(model: str, result_path: str) -> None:
    """Runs on each rank: the compiled Ulysses forward at the warm-up's three text lengths in
    a row, then at new ones; records how many graphs each forward compiled."""
    import types

    import torch
    import torch.distributed as dist
    from diffusers import QwenImagePipeline
    from torch._dynamo.utils import counters

    from engine.parallel import CfgSplit, sequence

    dist.init_process_group("gloo")
    torch.accelerator.device_count = lambda: 1
    rank = dist.get_rank()
    pipe = QwenImagePipeline.from_pretrained(model, dtype=torch.float32)
    transformer = pipe.transformer
    CfgSplit(transformer, rank)
    fast = sequence.FastSequence(types.SimpleNamespace(pipe=pipe, optimizations=["compile"]))

    def forward(length: int, on: bool) -> int:
        fast.on() if on else fast.off()
        gen = torch.Generator().manual_seed(length)
        before = int(counters["stats"].get("unique_graphs", 0))
        with torch.inference_mode():
            transformer(
                hidden_states=torch.randn(1, 16, 64, generator=gen),
                encoder_hidden_states=torch.randn(1, length, 32, generator=gen),
                encoder_hidden_states_mask=None,
                timestep=torch.full((1,), 0.5),
                img_shapes=[[(1, 4, 4)]],
                attention_kwargs={},
                return_dict=False,
            )
        return int(counters["stats"].get("unique_graphs", 0)) - before

    # As ParallelGenerator.warmup: a CFG image (both prompts, Ulysses off), then fast mode at
    # three lengths in a row; then users' prompts of lengths never seen.
    warm = [forward(15, False), forward(9, False)] + [forward(n, True) for n in (15, 16, 17)]
    later = [forward(n, True) for n in (21, 40, 33, 64, 18)] + [forward(12, False)]
    # Why three: the same with the fast warm-up at one length only.
    torch._dynamo.reset()
    single = [forward(15, False), forward(9, False), forward(15, True), forward(21, True)]
    Path(result_path).with_suffix(f".rank{rank}.json").write_text(json.dumps([warm, later, single]))
    dist.destroy_process_group()
    os._exit(0)  # as in check()


def run_ranks(check_name: str, model: Path, out: Path) -> list[Any]:
    """Both ranks' results of ``check_name`` run under torchrun."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(Path(__file__).resolve()), str(model), str(out), check_name,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(out.with_suffix(f".rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_after_the_warm_up_lengths_a_new_prompt_length_compiles_nothing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    single_new = []
    for rank, (warm, later, single) in enumerate(
        run_ranks("lengths", tiny_model_dir, tmp_path / "result")
    ):
        assert warm[2] > 0 and sum(warm[3:]) > 0, (rank, warm)  # the lengths compiled
        assert later == [0, 0, 0, 0, 0, 0], (rank, later)
        single_new.append(single[3])
    assert sum(single_new) > 0  # after one fast length, a new length compiled again


@pytest.mark.slow
def test_fast_mode_ulysses_switches_on_and_off_and_matches_one_process(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    for rank, results in enumerate(run_ranks("check", tiny_model_dir, tmp_path / "result")):
        for state, error, answered, asked in results:
            assert error < 1e-5, (rank, state, error)
            # On: every share question answered locally (q, k, v, out per block; the gather).
            assert (answered > 0) == (state == "on") and asked == 0


def test_answering_a_share_inside_compiled_code_compiles_once(tmp_path: Path) -> None:
    """``gather`` runs inside the compiled attention. Python state it changed became a guard,
    every forward recompiled, and the last recompile ran inside a CUDA graph capture (two
    H200s: "operation not permitted when stream is capturing")."""
    import torch
    import torch.distributed as dist
    from torch._dynamo.testing import CompileCounter

    from engine.parallel.sequence import LocalSizes

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        group = dist.group.WORLD
        sizes = LocalSizes(lambda **kwargs: None, rank=0, world=1)
        sizes(hidden_states=torch.zeros(1, 16, 4), encoder_hidden_states=torch.zeros(1, 5, 4))
        counter = CompileCounter()
        torch._dynamo.reset()

        @torch.compile(backend=counter, fullgraph=True)
        def attention(x: torch.Tensor) -> torch.Tensor:
            return x * sizes.gather(21, group)[0]

        for _ in range(4):
            assert float(attention(torch.ones(2)).sum()) == 42.0
        assert counter.frame_count == 1
    finally:
        torch._dynamo.reset()
        dist.destroy_process_group()


def test_the_ulysses_glue_runs_eagerly_inside_compiled_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compiled, the glue specialised on each rank's share: every new prompt length compiled
    it again (6.3 s for such a fast image on two H200s against 3.0 s with eager glue)."""
    import torch
    from diffusers.models import attention_dispatch

    from engine.parallel.sequence import run_ulysses_glue_eagerly

    traced: list[bool] = []

    def glue(x: torch.Tensor) -> torch.Tensor:
        traced.append(torch.compiler.is_compiling())
        return x * 2

    monkeypatch.setattr(attention_dispatch, "_templated_context_parallel_attention", glue)
    run_ulysses_glue_eagerly()
    run_ulysses_glue_eagerly()  # idempotent: wrapped once
    wrapped = attention_dispatch._templated_context_parallel_attention
    assert wrapped is not glue and wrapped._imagine_eager

    @torch.compile(backend="eager")
    def block(x: torch.Tensor) -> torch.Tensor:
        return attention_dispatch._templated_context_parallel_attention(x + 1) - 1

    torch._dynamo.reset()
    try:
        for _ in range(2):
            assert float(block(torch.ones(3)).sum()) == 9.0
    finally:
        torch._dynamo.reset()
    assert traced == [False, False]  # never traced, run as it is each time


if __name__ == "__main__":
    (check_lengths if sys.argv[3:] == ["lengths"] else check)(sys.argv[1], sys.argv[2])
