"""``python -m engine.remote status|generate``: check the GPU workers without Discord.

From any host with the deployment's ``.env`` (``IMAGINE_REDIS_URL``): list the workers and what
they run, or send one test image through them exactly as ``/imagine`` would. README and
docs/SCALE_OUT.md document these two commands; keep their flags stable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from pathlib import Path

from engine.contract import EngineStatus, JobFailed, JobRequest, Mode, Progress
from engine.presets import ASPECTS, BUILTIN_STYLES, DEFAULT_ASPECT, DEFAULT_STYLE
from engine.redis.backend import RedisBackend
from engine.redis.redaction import install_log_redaction
from engine.redis.settings import RemoteSettings
from engine.settings import EngineSettings, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.remote",
        description="Check the GPU workers behind IMAGINE_REDIS_URL from any machine, without "
        "Discord: list them, or send one test image through them.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="Redis health, workers, what they run")
    status.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for a worker to be ready (they load the model first)",
    )
    gen = sub.add_parser("generate", help="render one image on a worker, like /imagine does")
    gen.add_argument("prompt")
    gen.add_argument("--style", default=DEFAULT_STYLE, choices=sorted(BUILTIN_STYLES))
    gen.add_argument("--aspect", default=DEFAULT_ASPECT, choices=list(ASPECTS))
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--mode", default=None, choices=[str(m) for m in Mode])
    gen.add_argument("--out", required=True, help="where to write the PNG")
    gen.add_argument("--timeout", type=float, default=900.0, help="give up after this (s)")
    return parser


def _print_status(status: EngineStatus) -> None:
    print(f"backend: redis   ready: {'yes' if status.ready else 'no'}")
    if status.note:
        print(f"note: {status.note}")
    print(f"queue: {status.queue_length} waiting, {len(status.running)} rendering")
    if status.mean_sec_per_step:
        print(f"seconds per step (mean of workers): {status.mean_sec_per_step:.3f}")
    for worker in status.workers:
        if worker.memory_mode == "loading":
            print(f"  {worker.name}: loading the model")
            continue
        job = f"rendering {worker.current_job}" if worker.current_job else "idle"
        images = "1 image" if worker.jobs_done == 1 else f"{worker.jobs_done} images"
        print(
            f"  {worker.name}: {worker.gpu} ({worker.memory_gb:g} GB, {worker.memory_mode}), "
            f"{images}, {job}"
        )


async def _cli(
    args: argparse.Namespace, settings: RemoteSettings, engine_settings: EngineSettings
) -> int:
    backend = RedisBackend(settings, engine_settings)
    await backend.start()
    try:
        if args.command == "status":
            status = await backend.status()
            deadline = time.monotonic() + args.wait
            while not status.ready and time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                status = await backend.status()
            _print_status(status)
            return 0 if status.ready else 1
        request = JobRequest(
            job_id=f"cli-{uuid.uuid4().hex[:12]}",
            user_id=0,
            prompt=args.prompt,
            style=BUILTIN_STYLES[args.style],
            aspect=args.aspect,
            seed=args.seed,
            mode=Mode(args.mode) if args.mode else backend.engine_settings.default_mode,
        )

        def show(progress: Progress) -> None:
            print(
                f"\r  step {progress.step}/{progress.total} ({progress.percent}%), "
                f"eta {progress.eta_s:.0f}s   ",
                end="",
                flush=True,
            )

        try:
            handle = await backend.submit(request, show)
            async with asyncio.timeout(args.timeout):
                result = await handle.result()
        except JobFailed as exc:
            print(f"\nerror: {exc.user_message}", file=sys.stderr)
            return 1
        except TimeoutError:
            await backend.cancel(request.job_id)
            print(f"\nerror: no image after {args.timeout:.0f}s", file=sys.stderr)
            return 1
        image = result.image
        await asyncio.to_thread(Path(args.out).write_bytes, image.png)
        print(
            f"\nwrote {args.out} ({image.width}x{image.height}, seed {image.seed}, "
            f"{result.mode} mode, {result.steps} steps) on {result.worker} in "
            f"{result.run_s:.2f}s after {result.queued_s:.2f}s in the queue"
        )
        return 0
    finally:
        await backend.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(RemoteSettings)
        install_log_redaction(settings.redis_url)  # the URL may hold a password
        engine_settings = load_settings(EngineSettings)
    except SystemExit as exc:  # the error is printed, by variable, without any value
        return int(exc.code or 2)
    if not settings.redis_url:
        print("error: set IMAGINE_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
        return 2
    return asyncio.run(_cli(args, settings, engine_settings))


if __name__ == "__main__":
    raise SystemExit(main())
