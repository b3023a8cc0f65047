"""gallery search: full-text index of prompts, guild_settings.gallery_public, images by guild

The web gallery searches prompts with SQLite FTS5. ``generations_fts`` is an external-content
FTS5 table over ``generations.prompt`` (rowid = ``generations.id``): the text is stored once, in
``generations``, and three triggers keep the index in step with every insert, update and delete,
whoever makes them (the bot, retention, a member erasing their data, an admin in the sqlite3
shell). The upgrade indexes the rows already there.

Careful in later migrations: a batch operation that *recreates* ``generations`` (SQLite's
move-and-copy, used e.g. to drop a column) drops these triggers with the old table; such a
migration must create them again (the gallery test that inserts a row after upgrading to head
and finds it would fail otherwise).

``guild_settings.gallery_public``: whether members may see the whole server's gallery (admins
always can; ``/limits gallery on|off``). ``ix_images_guild_created`` serves the gallery's
newest-first listing of one server.

On other databases than SQLite no index is made; the gallery then searches with LIKE.

Revision ID: 0004_gallery_search
Revises: 0003_image_store
Create Date: 2026-12-01 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004_gallery_search"
down_revision: str | Sequence[str] | None = "0003_image_store"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# unicode61 with diacritics folded: "cafe" finds "café"; prefix indexes keep "fox*" cheap.
CREATE_FTS = (
    "CREATE VIRTUAL TABLE generations_fts USING fts5("
    "prompt, content='generations', content_rowid='id', "
    "tokenize='unicode61 remove_diacritics 2', prefix='2 3')"
)
TRIGGERS = (
    """CREATE TRIGGER generations_fts_ai AFTER INSERT ON generations BEGIN
        INSERT INTO generations_fts(rowid, prompt) VALUES (new.id, new.prompt);
    END""",
    """CREATE TRIGGER generations_fts_ad AFTER DELETE ON generations BEGIN
        INSERT INTO generations_fts(generations_fts, rowid, prompt)
        VALUES ('delete', old.id, old.prompt);
    END""",
    """CREATE TRIGGER generations_fts_au AFTER UPDATE OF prompt ON generations BEGIN
        INSERT INTO generations_fts(generations_fts, rowid, prompt)
        VALUES ('delete', old.id, old.prompt);
        INSERT INTO generations_fts(rowid, prompt) VALUES (new.id, new.prompt);
    END""",
)
TRIGGER_NAMES = ("generations_fts_ai", "generations_fts_ad", "generations_fts_au")


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    with op.batch_alter_table("guild_settings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("gallery_public", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index("ix_images_guild_created", ["guild_id", "created_at"])
    if not _sqlite():
        return
    bind = op.get_bind()
    try:
        bind.exec_driver_sql(CREATE_FTS)
    except sa.exc.OperationalError as exc:
        raise RuntimeError(
            "this SQLite has no FTS5 (full-text search), which the gallery needs; use a Python "
            "whose sqlite3 module is built with FTS5 (every python.org and Debian build is)"
        ) from exc
    for trigger in TRIGGERS:
        bind.exec_driver_sql(trigger)
    bind.exec_driver_sql("INSERT INTO generations_fts(generations_fts) VALUES ('rebuild')")


def downgrade() -> None:
    if _sqlite():
        bind = op.get_bind()
        for name in TRIGGER_NAMES:
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        bind.exec_driver_sql("DROP TABLE IF EXISTS generations_fts")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index("ix_images_guild_created")
    with op.batch_alter_table("guild_settings", schema=None) as batch_op:
        batch_op.drop_column("gallery_public")
