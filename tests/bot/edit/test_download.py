"""Where /edit fetches an upload from (issue 20 item 10): HTTPS on Discord's CDN only, never by
following a redirect; the wire emulator's own origin only while the TEST ONLY endpoint moved
discord.py there."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import discord
import pytest
from aiohttp import web

from bot.edit.service import attachment_url_allowed, download
from bot.uploads import UploadRefused


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://cdn.discordapp.com/attachments/1/2/cat.png", True),
        ("https://media.discordapp.net/attachments/1/2/cat.png", True),
        ("http://cdn.discordapp.com/attachments/1/2/cat.png", False),  # not over TLS
        ("https://cdn.discordapp.com.example.net/cat.png", False),
        ("https://example.net/cat.png", False),
        ("https://127.0.0.1:8080/healthz", False),
        ("file:///etc/passwd", False),
        ("not a url", False),
    ],
)
def test_only_discords_cdn_over_https(url: str, allowed: bool) -> None:
    assert attachment_url_allowed(url) is allowed


@dataclasses.dataclass
class Upload:
    """What ``download`` reads of a ``discord.Attachment``."""

    url: str
    size: int = 100
    filename: str = "cat.png"

    async def read(self) -> bytes:
        raise AssertionError("the bot's own HTTP session downloads it")


@pytest.fixture
async def cdn(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """A stand-in CDN on loopback, where discord.py's REST base points (as in the wire tests)."""

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG" + b"\x00" * 96)

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("https://example.net/elsewhere.png")

    app = web.Application()
    app.router.add_get("/attachments/1/cat.png", image)
    app.router.add_get("/attachments/2/cat.png", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    origin = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(discord.http.Route, "BASE", f"{origin}/api/v10")
    yield origin
    await runner.cleanup()


async def test_a_redirect_is_not_followed(cdn: str) -> None:
    client = discord.Client(intents=discord.Intents.none())
    session = aiohttp.ClientSession()
    client.http._HTTPClient__session = session  # type: ignore[attr-defined]
    try:
        data = await download(client, Upload(f"{cdn}/attachments/1/cat.png"), 2**20)  # type: ignore[arg-type]
        assert data.startswith(b"\x89PNG") and len(data) == 100
        with pytest.raises(UploadRefused, match="could not be downloaded"):
            await download(client, Upload(f"{cdn}/attachments/2/cat.png"), 2**20)  # type: ignore[arg-type]
        with pytest.raises(UploadRefused, match="could not be downloaded"):
            await download(client, Upload("https://example.net/cat.png"), 2**20)  # type: ignore[arg-type]
    finally:
        await session.close()
