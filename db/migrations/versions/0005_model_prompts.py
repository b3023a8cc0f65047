"""model prompts: what the model actually read, for Details

``generations.model_prompt`` is the prompt after the style's template and the quality suffix,
``generations.model_negative`` the whole negative prompt (a single space where none was given,
empty without true CFG); the engine reports both with the result and the bot writes them with
the other result fields, before the upload. Rows from before stay NULL (Details then shows
only the member's own prompt).

Plain ADD/DROP COLUMN (no batch move-and-copy), so the prompt search triggers of
``0004_gallery_search`` on ``generations`` stay as they are.

Revision ID: 0005_model_prompts
Revises: 0004_gallery_search
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005_model_prompts"
down_revision: str | Sequence[str] | None = "0004_gallery_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("generations", sa.Column("model_prompt", sa.Text(), nullable=True))
    op.add_column("generations", sa.Column("model_negative", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("generations", "model_negative")
    op.drop_column("generations", "model_prompt")
