"""Bot-side settings, read from the environment (``IMAGINE_`` prefix) and ``.env``.

How settings are read (prefix, ``.env``, unknown variables ignored) is shared with the engine
through ``engine.settings.ImagineBaseSettings``. The Discord token is a ``SecretStr`` so that
no repr, log line or validation error can print it; it is only ever unwrapped at the moment the
bot logs in. The two test-only endpoints of a Discord emulator are not here: see
``bot.endpoints``.
"""

from __future__ import annotations

import enum
import ipaddress
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from db.database import DEFAULT_URL
from engine.contract import Mode
from engine.settings import ImagineBaseSettings

TOKEN_ENV = "IMAGINE_DISCORD_TOKEN"


class CommandSync(enum.StrEnum):
    """Where slash commands are registered at start-up."""

    GLOBAL = "global"  # every guild and DMs; Discord may take a while to show changes
    GUILD = "guild"  # only IMAGINE_DEV_GUILD_ID, instantly: for development
    OFF = "off"  # leave the registered commands as they are


class BotSettings(ImagineBaseSettings):
    """Everything the Discord side needs; the GPU side has ``engine.settings.EngineSettings``."""

    discord_token: SecretStr | None = Field(
        None, description="bot token from the Discord developer portal (secret)"
    )
    application_id: int | None = Field(
        None,
        description="the application id for `python -m bot invite` (empty: asked of Discord "
        "with the token)",
    )
    database_url: str = Field(DEFAULT_URL, description="SQLAlchemy async URL of the database")
    redis_url: SecretStr | None = Field(
        None,
        description="send jobs to remote GPU workers through this Redis (empty: render in-process)",
    )

    command_sync: CommandSync = Field(
        CommandSync.GLOBAL, description="global, guild (IMAGINE_DEV_GUILD_ID only) or off"
    )
    dev_guild_id: int | None = Field(None, description="guild that gets the commands instantly")

    default_daily_quota: int = Field(
        25, ge=0, description="images per member per day where a guild chose none (0: no limit)"
    )
    default_max_queued: int = Field(
        3, ge=0, description="jobs a member may have waiting or running at once (0: no limit)"
    )
    quota_reset_hour: int = Field(0, ge=0, le=23, description="UTC hour at which quotas reset")
    allow_dms: bool = Field(True, description="allow /imagine in direct messages (default limits)")
    default_mode: Mode = Field(Mode.STANDARD, description="mode when /imagine names none")

    progress_interval_s: float = Field(
        1.5, ge=0.5, description="at most one progress edit per status message this often"
    )
    job_deadline_s: float | None = Field(
        None,
        gt=0,
        description="GPU seconds a job may take before it is stopped (empty: the engine's "
        "IMAGINE_JOB_TIMEOUT_S)",
    )
    history_page_size: int = Field(5, ge=1, le=10, description="generations per /history page")
    max_upload_mb: float = Field(
        10,
        gt=0,
        le=10,
        description="largest image /edit downloads, in MB (Discord's own cap, 10 MB, is the most)",
    )

    # Loopback outside Docker: /metrics and the gallery are not for the whole network. The
    # Docker image sets 0.0.0.0 inside the container, where the published port decides.
    health_host: str = Field("127.0.0.1", description="bind address of /healthz and /metrics")
    health_port: int = Field(8080, ge=0, le=65535, description="0 turns the server off")

    # The web gallery is served by the health server (same host and port, under /gallery).
    public_url: str | None = Field(
        None,
        description="base URL of gallery links, e.g. https://imagine.example.org behind a reverse "
        "proxy (empty: http://127.0.0.1:<health_port>)",
    )
    gallery_secret: SecretStr | None = Field(
        None,
        description="key that signs gallery links (empty: a random one kept in the data folder)",
    )
    gallery_link_ttl_s: int = Field(
        86_400, ge=60, le=30 * 86_400, description="seconds a /gallery link stays valid"
    )
    trusted_proxies: str = Field(
        "127.0.0.1/8,::1/128",
        description="reverse proxies whose X-Forwarded-For names the client (rate limits); "
        "behind Docker's published port add the bridge gateway, e.g. 172.17.0.1",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in (part.strip() for part in value.split(",")):
            if item:
                ipaddress.ip_network(item, strict=False)  # ValueError names the bad entry
        return value

    # The image store (bot.store): every delivered image, for the Vary and Remix buttons and
    # the web gallery. The Docker image sets /data/images (inside its volume).
    image_dir: Path = Field(
        Path("data/images"), description="folder of the image store (PNGs and WebP thumbnails)"
    )
    image_max_age_days: float = Field(
        0, ge=0, description="delete stored images older than this many days (0: keep forever)"
    )
    image_max_total_mb: float = Field(
        0, ge=0, description="keep the stored images under this many MB, oldest first (0: no cap)"
    )
    image_sweep_interval_s: float = Field(
        3600, ge=1, description="how often retention looks for images to delete"
    )

    # Housekeeping (bot.housekeeping): expired interaction tokens, and old history if asked.
    history_retention_days: float = Field(
        0,
        ge=0,
        description="delete finished generations (and their stored images) older than this "
        "many days (0: keep forever)",
    )
    housekeeping_interval_s: float = Field(
        600, ge=1, description="how often expired tokens and old history are removed"
    )

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator(
        "discord_token",
        "redis_url",
        "public_url",
        "gallery_secret",
        "dev_guild_id",
        "application_id",
        "job_deadline_s",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # `IMAGINE_DISCORD_TOKEN=` in .env means "not set", not "an empty token".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _guild_sync_needs_guild(self) -> BotSettings:
        if self.command_sync == CommandSync.GUILD and self.dev_guild_id is None:
            raise ValueError("IMAGINE_COMMAND_SYNC=guild needs IMAGINE_DEV_GUILD_ID")
        return self
