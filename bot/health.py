"""``/healthz`` for the Docker HEALTHCHECK and ``/metrics`` for Prometheus, on one small server.

``/healthz`` answers 200 only when the gateway is connected *and* the image backend says it is
ready: a bot that is online but cannot render is not healthy.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot import metrics
from bot.client import ImagineClient, NotStarted
from bot.gallery import mount_gallery
from bot.gallery.security import parse_networks
from bot.gallery.wiring import deps_for

logger = logging.getLogger(__name__)

BACKEND_TIMEOUT_S = 3.0


class HealthServer:
    def __init__(self, bot: ImagineClient, host: str, port: int) -> None:
        self.bot = bot
        self.host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int | None:
        """The port actually bound (useful when 0 was given to a test), or None when off."""
        if self._runner is None:
            return None
        for address in self._runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                return int(address[1])
        return None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        # The web gallery shares this server (one port): /gallery/<signed link>/...
        mount_gallery(
            app,
            deps_for(self.bot),
            trusted_proxies=parse_networks(self.bot.settings.trusted_proxies),
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        logger.info("health and metrics on http://%s:%s/healthz", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def report(self) -> tuple[bool, dict[str, object]]:
        bot = self.bot
        gateway = bot.is_ready() and not bot.is_closed()
        backend_ready = False
        backend_error = None
        queue_length = None
        jobs_followed = 0
        try:
            status = await asyncio.wait_for(bot.engine_status(), BACKEND_TIMEOUT_S)
            backend_ready = bool(status.ready)
            queue_length = status.queue_length
            jobs_followed = len(bot.jobs.active_keys())
        except NotStarted:
            pass  # still starting: the backend is not ready, and that is all
        except Exception as exc:  # an unreachable backend is a health answer, not a crash
            backend_error = type(exc).__name__
        body: dict[str, object] = {
            "status": "ok" if gateway and backend_ready else "unavailable",
            "gateway": gateway,
            "backend": backend_ready,
            "queue_length": queue_length,
            "jobs_followed": jobs_followed,
        }
        if backend_error:
            body["backend_error"] = backend_error
        return gateway and backend_ready, body

    async def healthz(self, request: web.Request) -> web.Response:
        healthy, body = await self.report()
        return web.Response(
            status=200 if healthy else 503,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
