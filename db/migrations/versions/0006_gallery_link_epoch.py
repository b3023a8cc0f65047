"""gallery link generation: revoking every gallery link of a server

``guild_settings.gallery_links_epoch`` is the generation of a server's gallery links: every
signed link carries the value it was made with, and only links of the current generation work.
``/limits gallery_revoke`` moves it on, ending every link given out so far (a leaked link, a
member who should no longer see the gallery). Links made before this revision carry none and
count as generation 0, so they keep working until the first revocation.

Plain ADD/DROP COLUMN (no batch move-and-copy of ``guild_settings``).

Revision ID: 0006_gallery_link_epoch
Revises: 0005_model_prompts
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006_gallery_link_epoch"
down_revision: str | Sequence[str] | None = "0005_model_prompts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "guild_settings",
        sa.Column("gallery_links_epoch", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("guild_settings", "gallery_links_epoch")
