"""SQLAlchemy 2 typed models: the shape of everything the bot remembers.

The schema itself is owned by the Alembic migrations in ``db/migrations``; these models must
match them (``alembic check`` in the tests proves it), so a change here always comes with a new
migration.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints: SQLite batch migrations can only drop or alter constraints they can name.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Built-in styles live in the styles table under this guild id: SQLite's UNIQUE treats NULLs
# as distinct, so NULL could not keep two built-ins of the same name out.
BUILTIN_GUILD_ID = 0
# Quota rows for direct messages use this guild id, for the same reason.
DM_GUILD_ID = 0


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes in Python, naive UTC in the database.

    SQLite has no timezone type; storing naive UTC keeps values sortable as text and the API
    never hands out a naive datetime that someone could mistake for local time.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class GenerationStatus(enum.StrEnum):
    """Lifecycle of a job row; ``queued``, ``running`` and ``delivering`` are unfinished."""

    QUEUED = "queued"
    RUNNING = "running"
    # The result is written down and the image is being uploaded (see ``record_result``).
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (GenerationStatus.DONE, GenerationStatus.FAILED, GenerationStatus.CANCELLED)


ACTIVE_STATUSES: tuple[str, ...] = (
    GenerationStatus.QUEUED,
    GenerationStatus.RUNNING,
    GenerationStatus.DELIVERING,
)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class GuildSettings(Base):
    """Per-guild limits. Rows appear on the first admin change; absent means bot defaults.

    ``daily_quota`` / ``max_queued`` are NULL while the guild follows the bot-wide defaults, so
    changing a default in the environment reaches every guild that never chose its own.
    """

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    daily_quota: Mapped[int | None] = mapped_column(Integer)
    max_queued: Mapped[int | None] = mapped_column(Integer)
    blocked_words: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    allowed_channels: Mapped[list[int]] = mapped_column(JSON, default=list, server_default="[]")
    exempt_roles: Mapped[list[int]] = mapped_column(JSON, default=list, server_default="[]")
    # Members may see the whole server's web gallery (admins always can): /limits gallery.
    gallery_public: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The generation of the server's gallery links: only links made in it work (/limits
    # gallery_revoke moves it on, ending every link given out so far).
    gallery_links_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Style(Base):
    """A prompt template. ``guild_id`` 0 holds the built-ins; a guild's own row shadows one."""

    __tablename__ = "styles"
    __table_args__ = (UniqueConstraint("guild_id", "name_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(64))
    # casefolded name: lookups are case-insensitive beyond ASCII, which SQLite's NOCASE is not.
    name_key: Mapped[str] = mapped_column(String(64))
    template: Mapped[str] = mapped_column(Text)
    negative: Mapped[str] = mapped_column(Text, default="", server_default="")
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_by: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    @property
    def builtin(self) -> bool:
        return self.guild_id == BUILTIN_GUILD_ID

    def __repr__(self) -> str:
        return f"<Style {self.name!r} guild={self.guild_id}>"


class Generation(Base):
    """One requested image, from the reservation to its end; the job's whole story."""

    __tablename__ = "generations"
    __table_args__ = (
        Index("ix_generations_user_guild_created", "user_id", "guild_id", "created_at"),
        Index("ix_generations_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The Discord interaction id: unique, so a redelivered interaction never runs or charges twice.
    job_key: Mapped[str] = mapped_column(String(32), unique=True)
    # The job's spec (``bot.imagine.spec.JobSpec``, which maps every row to a kind): its kind,
    # what it was made from, its image-to-image strength and its input images by image-store
    # key, with the request columns below. A restart rebuilds the job from these alone.
    kind: Mapped[str] = mapped_column(String(16), default="imagine", server_default="imagine")
    parent_key: Mapped[str | None] = mapped_column(String(32), index=True)
    # A variation's img2img strength (share of the schedule re-run from the parent's image).
    strength: Mapped[float | None] = mapped_column(Float)
    inputs: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")

    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)

    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str | None] = mapped_column(Text)
    style: Mapped[str] = mapped_column(String(64))
    aspect: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int | None] = mapped_column(BigInteger)
    mode: Mapped[str] = mapped_column(String(16))

    status: Mapped[str] = mapped_column(
        String(16), default=GenerationStatus.QUEUED, server_default="queued"
    )
    error: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[int | None] = mapped_column(BigInteger)
    # Kept so a restarted bot can still edit the original response within Discord's 15 minutes.
    interaction_token: Mapped[str | None] = mapped_column(Text)

    seed_used: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    steps: Mapped[int | None] = mapped_column(Integer)
    true_cfg_scale: Mapped[float | None] = mapped_column(Float)
    mode_used: Mapped[str | None] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(256))
    worker: Mapped[str | None] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text)
    # What the model actually read (the engine reports it): the prompt after the style's
    # template and the quality suffix, and the whole negative prompt ("" without true CFG).
    model_prompt: Mapped[str | None] = mapped_column(Text)
    model_negative: Mapped[str | None] = mapped_column(Text)
    queued_s: Mapped[float | None] = mapped_column(Float)
    run_s: Mapped[float | None] = mapped_column(Float)

    # True while one unit of the user's daily quota is held for this job; the refund flips it,
    # which is what makes a refund happen exactly once.
    charged: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    quota_day: Mapped[dt.date] = mapped_column(Date)

    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # When the result was written down, before the upload (status ``delivering``).
    result_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    @property
    def finished(self) -> bool:
        return GenerationStatus(self.status).finished

    def __repr__(self) -> str:
        # No prompt and no interaction token in reprs: they end up in logs.
        return f"<Generation {self.job_key} {self.kind} user={self.user_id} {self.status}>"


class QuotaUsage(Base):
    """Units used by one user in one guild (0 for DMs) on one quota day."""

    __tablename__ = "quota_usage"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    used: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ImageRecord(Base):
    """A delivered image kept in the image store (``bot.store``): the files live on disk under
    their sha256, this row says whose they are and when they were made.

    ``job_key`` points at ``generations.job_key`` without a foreign key constraint: SQLite
    enforces none unless every connection turns them on, and retention deletes image rows while
    the history row stays (and erasing a member's data deletes both, images first). Several rows
    may share one ``sha256`` (identical bytes are stored once), so a file goes only when its
    last row does.
    """

    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_user_created", "user_id", "created_at"),
        Index("ix_images_guild_created", "guild_id", "created_at"),  # the web gallery's listing
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_key: Mapped[str] = mapped_column(String(32), unique=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)  # bytes of the PNG
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    thumb_size: Mapped[int] = mapped_column(Integer)  # bytes of the WebP thumbnail
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)

    def __repr__(self) -> str:
        return f"<ImageRecord {self.job_key} {self.sha256[:12]} user={self.user_id}>"
