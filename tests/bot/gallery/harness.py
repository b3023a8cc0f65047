"""A gallery on a loopback port with images in it, for the browser tests and the benchmark.

Images are made cheaply (no diffusion model): small PIL drawings stored through the real image
store and recorded through the real queries, exactly as a delivered image would be. The server
runs on its own thread and event loop, so tests can drive it from synchronous code (Playwright's
sync API refuses to run inside an event loop).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import itertools
import random
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from PIL import Image, ImageDraw

import db
from bot.gallery import GalleryDeps, LinkSigner, mount_gallery
from bot.gallery.admins import CONFIRMED_FOR_S, AdminConfirmations, Standing
from bot.gallery.security import TokenBucket
from bot.images import ImageKeeper
from bot.store import ImageStore

T = TypeVar("T")

GUILD = 811_111_111_111_111_111
OTHER_GUILD = 822_222_222_222_222_222
ALICE = 833_333_333_333_333_331
BOB = 833_333_333_333_333_332
CAROL = 833_333_333_333_333_333
NAMES = {ALICE: "alice", BOB: "bob", CAROL: "carol"}
GUILD_NAMES = {GUILD: "Pixel Garden", OTHER_GUILD: "Elsewhere"}
SECRET = b"test-gallery-secret-0123456789abcdef"
START = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)


def artwork(seed: int, size: tuple[int, int] = (320, 320)) -> bytes:
    """A small abstract picture (gradient sky, sun, hills), different for every seed."""
    rng = random.Random(seed)
    width, height = size
    top = [rng.randrange(40, 255) for _ in range(3)]
    bottom = [rng.randrange(0, 200) for _ in range(3)]
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(1, height - 1)
        colour = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (width, y)], fill=colour)
    r = rng.randrange(width // 10, width // 4)
    cx, cy = rng.randrange(r, width - r), rng.randrange(r, height // 2)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, rng.randrange(150, 255), 90))
    for layer in range(3):
        base = height * (0.55 + 0.13 * layer)
        shade = tuple(max(0, c - 60 * (layer + 1)) for c in bottom)
        points = [(0, height)]
        for x in range(0, width + 1, max(1, width // 8)):
            points.append((x, base + rng.uniform(-height * 0.08, height * 0.08)))
        points.append((width, height))
        draw.polygon(points, fill=shade)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class Seeded:
    """An image put in the gallery: its job key and its image id (the page is /i/<id>)."""

    job_key: str
    image_id: int
    prompt: str
    user_id: int
    guild_id: int | None


class GalleryServer:
    """The gallery app with a real database and image store, on 127.0.0.1, on its own loop."""

    def __init__(self, root: Path, *, rate_per_s: float = 1000.0, burst: int = 10_000) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._keys = itertools.count(9_000_000_000_000_000_000)
        self._minutes = itertools.count(0)
        self.store = ImageStore(root / "images")
        self.signer = LinkSigner(SECRET)
        self.database: db.Database | None = None
        self.runner: web.AppRunner | None = None
        self.base_url = ""
        self._limiter = TokenBucket(rate_per_s, burst)
        # What Discord says now about a member: a ``Standing`` (``Standing.GONE``: left, kicked
        # or banned), or a bool for Manage Server alone (None: Discord did not answer);
        # members not named here still have what their link says.
        self.admin_now: dict[int, Standing | bool | None] = {}
        self.clock = 0.0  # the admin answers' clock (``later`` moves it on)

    def later(self, seconds: float = CONFIRMED_FOR_S) -> None:
        """Let ``seconds`` pass for the cached admin answers (by default: all of them expire)."""
        self.clock += seconds + 1

    async def _still_admin(self, guild_id: int, user_id: int) -> Standing | bool | None:
        return self.admin_now.get(user_id, True)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def start(self) -> GalleryServer:
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.database = await db.Database.open(f"sqlite+aiosqlite:///{self.root}/gallery.db")
        parent = web.Application()
        keeper = ImageKeeper(lambda: self.store, lambda: self.database)  # type: ignore[arg-type]
        deps = GalleryDeps(
            database=lambda: self.database,
            files=lambda: self.store,
            signer=self.signer,
            forget=keeper.forget,
            admins=AdminConfirmations(self._still_admin, clock=lambda: self.clock),
            names=lambda guild_id, user_id: NAMES.get(user_id),
            guild_name=GUILD_NAMES.get,
        )
        mount_gallery(parent, deps, limiter=self._limiter)
        self.runner = web.AppRunner(parent, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    def stop(self) -> None:
        async def _stop() -> None:
            if self.runner is not None:
                await self.runner.cleanup()
            if self.database is not None:
                await self.database.close()

        self.call(_stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    # ----------------------------------------------------------------------------- data
    def add(
        self,
        prompt: str,
        *,
        user_id: int = ALICE,
        guild_id: int | None = GUILD,
        parent_key: str | None = None,
        size: tuple[int, int] = (320, 320),
        picture: bytes | None = None,
    ) -> Seeded:
        """A finished image, as the bot records a delivered one (a minute after the last)."""
        return self.call(self._add(prompt, user_id, guild_id, parent_key, size, picture))

    async def _add(
        self,
        prompt: str,
        user_id: int,
        guild_id: int | None,
        parent_key: str | None,
        size: tuple[int, int],
        picture: bytes | None,
    ) -> Seeded:
        assert self.database is not None
        key = str(next(self._keys))
        when = START + dt.timedelta(minutes=next(self._minutes))
        seed = int(key) % 4_294_967_295
        png = picture if picture is not None else artwork(int(key), size)
        await db.reserve_generation(
            self.database,
            db.NewGeneration(
                key,
                user_id,
                1,
                guild_id,
                prompt,
                "none",
                "1:1",
                "standard",
                negative_prompt="blurry",
                kind="variation" if parent_key else "imagine",
                parent_key=parent_key,
            ),
            daily_quota=None,
            max_queued=None,
            now=when,
        )
        await db.record_result(
            self.database,
            key,
            db.JobResultFields(
                seed=seed,
                width=size[0],
                height=size[1],
                steps=30,
                true_cfg_scale=4.0,
                mode_used="standard",
                model="Qwen/Qwen-Image",
                queued_s=0.5,
                run_s=12.3,
            ),
            now=when,
        )
        await db.complete_generation(self.database, key, message_id=1, now=when)
        stored = await asyncio.to_thread(self.store.put, png, stored_at=when.timestamp())
        row, _ = await db.add_image(
            self.database,
            job_key=key,
            sha256=stored.sha256,
            size=stored.size,
            width=stored.width,
            height=stored.height,
            thumb_size=stored.thumb_size,
            user_id=user_id,
            guild_id=guild_id,
            now=when,
        )
        return Seeded(key, row.id, prompt, user_id, guild_id)

    def set_public(self, public: bool, guild_id: int = GUILD) -> None:
        from db import gallery

        assert self.database is not None
        self.call(gallery.set_gallery_public(self.database, guild_id, public))

    def revoke(self, guild_id: int = GUILD) -> int:
        """What ``/limits gallery_revoke`` does: every link of the server given out so far ends."""
        from db import gallery

        assert self.database is not None
        return self.call(gallery.revoke_gallery_links(self.database, guild_id))

    def exists(self, image_id: int) -> bool:
        from db import gallery

        assert self.database is not None
        return self.call(gallery.get_entry(self.database, image_id)) is not None

    # ---------------------------------------------------------------------------- links
    def link(
        self,
        *,
        user_id: int = ALICE,
        guild_id: int | None = GUILD,
        admin: bool = False,
        ttl_s: float = 3600,
    ) -> str:
        """A link as ``/gallery`` makes it now (of the server's current link generation)."""
        from db import gallery

        assert self.database is not None
        epoch = self.call(gallery.gallery_links_epoch(self.database, guild_id))
        token = self.signer.sign(
            guild_id=guild_id, user_id=user_id, admin=admin, ttl_s=ttl_s, epoch=epoch
        )
        return f"{self.base_url}/gallery/{token}/"


PROMPTS = [
    "a lighthouse at dawn, oil painting",
    "a red fox in the snow",
    "misty mountains over a quiet lake",
    "a cozy cabin under the northern lights",
    "sunset over rolling hills, watercolor",
    "a tiny robot watering a flower",
    "a koi pond in autumn",
    "a desert caravan at dusk",
    "a castle on a cliff by the sea",
    "a field of sunflowers, impressionist",
    "a snowy village at night",
    "a sailboat on a calm bay",
    "an owl on a mossy branch",
    "a futuristic city skyline at sunrise",
    "a bowl of ramen, studio lighting",
]


def seed_gallery(server: GalleryServer, count: int = 30) -> list[Seeded]:
    """``count`` images in GUILD: two thirds Alice's, a third Bob's, varied prompts."""
    seeded = []
    for n in range(count):
        prompt = PROMPTS[n % len(PROMPTS)]
        if n >= len(PROMPTS):
            prompt = f"{prompt}, variation {n // len(PROMPTS) + 1}"
        seeded.append(server.add(prompt, user_id=BOB if n % 3 == 2 else ALICE))
    return seeded
