"""Persistence: SQLite through SQLAlchemy 2 async + aiosqlite, schema by Alembic.

``Database.open(url)`` migrates to head and returns the engine and session factories; every
query is a function in the ``db.queries`` package (re-exported here, by concern: guild, styles,
quota, generations) that takes the ``Database`` first.
"""

from db import queries
from db.database import DEFAULT_URL, Database, SchemaTooNew, alembic_config, create_engine
from db.images import (
    ErasedUser,
    add_image,
    delete_image,
    erase_user,
    forget_images,
    get_image,
    image_references,
    image_totals,
    images_oldest_first,
)
from db.models import (
    BUILTIN_GUILD_ID,
    Base,
    Generation,
    GenerationStatus,
    GuildSettings,
    ImageRecord,
    QuotaUsage,
    Style,
)
from db.queries import *  # noqa: F403  (every query, listed once: db.queries.__all__)

__all__ = [
    "BUILTIN_GUILD_ID",
    "DEFAULT_URL",
    "Base",
    "Database",
    "ErasedUser",
    "Generation",
    "GenerationStatus",
    "GuildSettings",
    "ImageRecord",
    "QuotaUsage",
    "SchemaTooNew",
    "Style",
    "add_image",
    "alembic_config",
    "create_engine",
    "delete_image",
    "erase_user",
    "forget_images",
    "get_image",
    "image_references",
    "image_totals",
    "images_oldest_first",
    *queries.__all__,
]
