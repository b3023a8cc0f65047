"""One image across two GPUs of one host (project issue 14).

CFG modes (``cfg.py``): with true CFG every denoising step runs the transformer twice, on the
prompt and on the negative prompt, and the two forwards are independent. With
``IMAGINE_GPUS=0,1`` they run at the same time on two GPUs: rank 0 computes the conditional
prediction, rank 1 the unconditional one, and the two exchange their outputs once per step (two
broadcasts of the predicted velocity, under a megabyte at 1328²). Both ranks then run the same
combination and scheduler step on the same numbers, so their latents stay identical, and the
image is the one a single GPU makes with the same seed (bit for bit in eager mode on the CPU;
within 4/255 per pixel compiled on two H200s, see docs/PERFORMANCE.md).

Fast mode (``sequence.py``, CUDA only): no second forward to hand over, so each forward's
sequence is split over the two GPUs (Ulysses, diffusers' context parallelism), replayed as a
CUDA graph per image size and prompt length (``engine.cudagraph``). On the CPU, fast mode runs
on rank 0 alone.

The rest of the system sees one engine: ``load(settings)`` (through
``engine.generators.load_main``) returns a ``ParallelGenerator`` on rank 0, a ``Generator``
(``engine.generator``) of text-to-image like ``engine.pipeline.ImageGenerator``. It starts the
other rank itself, as a child process that loads the pipeline on its own GPU and then follows
rank 0's requests in lockstep. Tensors travel through
torch.distributed (NCCL on GPUs, gloo on the CPU); requests and each step's stop decision travel
through a ``Channel`` (a pipe to the child process, or a gloo group when the ranks were started
by ``torchrun``, as ``bench/multi_gpu.py`` does).

If a rank fails in the middle of an image the others cannot know where it stopped, so the group
is given up: the follower is ended and rank 0 goes on alone on its own GPU (logged, and shown
in ``info()``).
"""

from engine.parallel.cfg import CfgSplit
from engine.parallel.channels import Channel, GlooChannel, PipeChannel, init_group
from engine.parallel.group import ParallelGenerator, attention_choice, follow
from engine.parallel.launch import load, parse_gpus, rank_devices
from engine.parallel.sequence import SETUPS, enable_sequence_parallel, set_graphs

__all__ = [
    "SETUPS",
    "CfgSplit",
    "Channel",
    "GlooChannel",
    "ParallelGenerator",
    "PipeChannel",
    "attention_choice",
    "enable_sequence_parallel",
    "follow",
    "init_group",
    "load",
    "parse_gpus",
    "rank_devices",
    "set_graphs",
]
