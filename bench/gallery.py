"""Gallery page weight and speed: a server's page of 50 thumbnails, over loopback.

Builds a database and an image store in a temporary folder: ``--images`` stored images in one
server (made at ``--side`` px, thumbnailed by the real store), plus ``--filler`` older
generations spread over other servers so the queries work on a table of realistic size. Then
it serves the gallery with the real app and measures, from a client on the same machine:

* the bytes a browser transfers for the page: HTML, the stylesheet and every thumbnail (all
  of them, as if the visitor scrolled to the end; lazy loading only makes it less);
* the time to answer the page (request sent to body received), over ``--requests`` requests,
  for the plain page, a search and the second page.

Pictures: ``pink`` (default) is 1/f noise, which has the power spectrum of natural photographs
and so compresses like one (a stand-in for real Qwen-Image output, which cannot be rendered
here); ``art`` is the tests' flat drawings (compress far better); ``white`` is per-pixel noise,
the worst case no real image reaches.

    python bench/gallery.py                       # the figures in docs/PERFORMANCE.md
    python bench/gallery.py --kind white --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import ClientSession, web
from PIL import Image, ImageDraw
from sqlalchemy import insert

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import db  # noqa: E402
from bot.gallery import GalleryDeps, LinkSigner, mount_gallery  # noqa: E402
from bot.gallery.security import TokenBucket  # noqa: E402
from bot.images import ImageKeeper  # noqa: E402
from bot.store import ImageStore  # noqa: E402

GUILD = 900_000_000_000_000_001
USERS = [900_000_000_000_001_000 + n for n in range(8)]
WORDS = [
    "lighthouse",
    "fox",
    "mountain",
    "lake",
    "cabin",
    "robot",
    "castle",
    "village",
    "owl",
    "city",
    "ramen",
    "garden",
]


def pink_noise(side: int, rng: np.random.Generator) -> bytes:
    """A PNG of 1/f ("pink") noise in colour: detail at every scale, like a photograph."""
    freqs = np.fft.fftfreq(side)
    radius = np.sqrt(freqs[:, None] ** 2 + freqs[None, :] ** 2)
    radius[0, 0] = 1.0
    channels = []
    for _ in range(3):
        spectrum = np.fft.fft2(rng.standard_normal((side, side))) / radius
        field = np.real(np.fft.ifft2(spectrum))
        field = (field - field.mean()) / (field.std() + 1e-9)
        channels.append(np.clip(128 + 48 * field, 0, 255))
    pixels = np.stack(channels, axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def white_noise(side: int, rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def flat_art(side: int, rng: np.random.Generator) -> bytes:
    seed = int(rng.integers(0, 2**31))
    r = random.Random(seed)
    image = Image.new("RGB", (side, side), tuple(r.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y, s = r.randrange(side), r.randrange(side), r.randrange(side // 8, side // 2)
        draw.ellipse([x - s, y - s, x + s, y + s], fill=tuple(r.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


PICTURES = {"pink": pink_noise, "white": white_noise, "art": flat_art}


async def fill(
    database: db.Database, store: ImageStore, args: argparse.Namespace
) -> tuple[int, int]:
    """The server's images (newest) and the filler rows (older, other servers)."""
    rng = np.random.default_rng(7)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    thumb_bytes = 0
    if args.filler:
        gens, imgs = [], []
        for n in range(args.filler):
            key = f"9{n:017d}"
            when = start + dt.timedelta(seconds=n)
            guild = 800_000_000_000_000_000 + n % 20
            prompt = f"a {WORDS[n % len(WORDS)]} and a {WORDS[(n * 7) % len(WORDS)]}, filler {n}"
            gens.append(
                {
                    "job_key": key,
                    "kind": "imagine",
                    "guild_id": guild,
                    "channel_id": 1,
                    "user_id": USERS[n % len(USERS)],
                    "prompt": prompt,
                    "style": "none",
                    "aspect": "1:1",
                    "mode": "standard",
                    "status": "done",
                    "charged": False,
                    "quota_day": when.date(),
                    "created_at": when,
                }
            )
            imgs.append(
                {
                    "job_key": key,
                    "sha256": f"{n:064x}",
                    "size": 1,
                    "width": 1328,
                    "height": 1328,
                    "thumb_size": 1,
                    "guild_id": guild,
                    "user_id": USERS[n % len(USERS)],
                    "created_at": when,
                }
            )
        async with database.sessions.begin() as session:
            await session.execute(insert(db.Generation), gens)
            await session.execute(insert(db.ImageRecord), imgs)
    make = PICTURES[args.kind]
    for n in range(args.images):
        key = f"1{n:017d}"
        when = start + dt.timedelta(days=30, minutes=n)
        prompt = f"a {WORDS[n % len(WORDS)]} at dawn, photograph {n}"
        user = USERS[n % len(USERS)]
        await db.reserve_generation(
            database,
            db.NewGeneration(key, user, 1, GUILD, prompt, "none", "1:1", "standard"),
            daily_quota=None,
            max_queued=None,
            now=when,
        )
        stored = await asyncio.to_thread(store.put, make(args.side, rng))
        thumb_bytes += stored.thumb_size
        await db.add_image(
            database,
            job_key=key,
            sha256=stored.sha256,
            size=stored.size,
            width=stored.width,
            height=stored.height,
            thumb_size=stored.thumb_size,
            user_id=user,
            guild_id=GUILD,
            now=when,
        )
    return args.images, thumb_bytes


async def timed_get(session: ClientSession, url: str) -> tuple[float, bytes, int]:
    started = time.perf_counter()
    async with session.get(url) as response:
        body = await response.read()
        header_bytes = sum(len(k) + len(v) + 4 for k, v in response.raw_headers) + 17
        assert response.status == 200, (response.status, url)
    return time.perf_counter() - started, body, header_bytes


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 2),
        "max_ms": round(1000 * ordered[-1], 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gallery-bench-") as folder:
        root = Path(folder)
        database = await db.Database.open(f"sqlite+aiosqlite:///{root}/imagine.db")
        store = ImageStore(root / "images")
        made = time.perf_counter()
        count, thumbs_total = await fill(database, store, args)
        made = time.perf_counter() - made
        signer = LinkSigner(b"bench-secret-0123456789abcdef-xyz")
        parent = web.Application()
        mount_gallery(
            parent,
            GalleryDeps(
                database=lambda: database,
                files=lambda: store,
                signer=signer,
                forget=ImageKeeper(lambda: store, lambda: database).forget,
            ),
            limiter=TokenBucket(1e9, 10**9),
        )
        runner = web.AppRunner(parent, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        token = signer.sign(guild_id=GUILD, user_id=USERS[0], admin=True, ttl_s=3600)
        page = f"{base}/gallery/{token}/"
        try:
            async with ClientSession() as session:
                _, html, html_headers = await timed_get(session, page)
                text = html.decode()
                assets = re.findall(r'(?:src|href)="(/gallery/[^"]+\.(?:webp|css)[^"]*)"', text)
                thumbs = [a for a in assets if ".webp" in a]
                weight = len(html) + html_headers
                asset_bytes = {}
                first_card_times = []
                for url in dict.fromkeys(assets):
                    took, body, headers = await timed_get(session, base + url.replace("&amp;", "&"))
                    asset_bytes[url] = len(body) + headers
                    if ".webp" in url:
                        first_card_times.append(took)
                weight += sum(asset_bytes.values())
                older = re.search(r'rel="next" href="([^"]+)"', text)
                cases = {
                    "page": page,
                    "search": page + "?q=lighthouse",
                    "second_page": base + older.group(1).replace("&amp;", "&") if older else page,
                }
                timings: dict[str, dict[str, float]] = {}
                for name, url in cases.items():
                    for _ in range(5):  # warm-up
                        await timed_get(session, url)
                    timings[name] = summary(
                        [(await timed_get(session, url))[0] for _ in range(args.requests)]
                    )
                thumb_times = [
                    (await timed_get(session, base + thumbs[n % len(thumbs)]))[0]
                    for n in range(args.requests)
                ]
                timings["thumbnail_cached"] = summary(thumb_times)
                timings["thumbnail_first"] = summary(first_card_times)
        finally:
            await runner.cleanup()
            await database.close()
    return {
        "kind": args.kind,
        "side": args.side,
        "images": count,
        "filler_rows": args.filler,
        "thumbnails_on_page": len(thumbs),
        "html_bytes": len(html),
        "store_thumbnail_bytes_mean": round(thumbs_total / max(1, count)),
        "card_bytes_mean": round(
            sum(v for k, v in asset_bytes.items() if ".webp" in k) / max(1, len(thumbs))
        ),
        "page_transfer_bytes": weight,
        "page_transfer_mb": round(weight / 1e6, 3),
        "timings": timings,
        "requests_per_case": args.requests,
        "setup_s": round(made, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--side", type=int, default=1328, help="pixels of each stored image")
    parser.add_argument("--kind", choices=sorted(PICTURES), default="pink")
    parser.add_argument("--filler", type=int, default=20_000, help="older rows elsewhere")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
