"""image store: the images table (delivered images kept on disk by sha256), generations.strength

Every delivered image is kept by the bot's image store (``bot.store``): the PNG and a WebP
thumbnail under their sha256. ``images`` says which job each file belongs to, whose it is and
when it was made, for retention (oldest first), the Vary buttons and a member's erase command.
``generations.strength`` records a variation's img2img strength next to its ``parent_key``.

Revision ID: 0003_image_store
Revises: 0002_job_results
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003_image_store"
down_revision: str | Sequence[str] | None = "0002_job_results"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("strength", sa.Float(), nullable=True))
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_key", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("thumb_size", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("job_key", name=op.f("uq_images_job_key")),
    )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_images_sha256"), ["sha256"])
        batch_op.create_index(batch_op.f("ix_images_created_at"), ["created_at"])
        batch_op.create_index("ix_images_user_created", ["user_id", "created_at"])


def downgrade() -> None:
    # The files on disk stay where they are: an older bot never looks at them, and upgrading
    # again starts with an empty table (the retention sweep works from the files themselves).
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index("ix_images_user_created")
        batch_op.drop_index(batch_op.f("ix_images_created_at"))
        batch_op.drop_index(batch_op.f("ix_images_sha256"))
    op.drop_table("images")
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_column("strength")
