"""job specs: every row records its job kind and its inputs by image-store key

A job row is the job's spec (``bot.imagine.spec.JobSpec``): what a restart needs to run it
again is on the row, never anywhere else. Two things were implicit before:

* a variation's kind: rows of kind ``variation`` were either the old Variations button (new
  seeds of the same prompt, no ``strength``) or Vary (Subtle/Strong), image-to-image from the
  parent's stored image at a ``strength``. The second get the kind ``vary``.
* a job's input images: ``generations.inputs`` lists their image-store keys, in order. A vary
  or remix row's input is its parent's stored image (key ``parent_key``); an edit's inputs are
  the image rows ``<job_key>:in<n>`` it kept (none where they were not kept). Text-to-image
  rows have none.

Plain ADD/DROP COLUMN (no batch move-and-copy), so the prompt search triggers of
``0004_gallery_search`` on ``generations`` stay as they are.

Revision ID: 0007_job_specs
Revises: 0006_gallery_link_epoch
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007_job_specs"
down_revision: str | Sequence[str] | None = "0006_gallery_link_epoch"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "generations", sa.Column("inputs", sa.JSON(), nullable=False, server_default="[]")
    )
    op.execute(
        "UPDATE generations SET kind = 'vary' WHERE kind = 'variation' AND strength IS NOT NULL"
    )
    op.execute(
        "UPDATE generations SET inputs = json_array(parent_key) "
        "WHERE strength IS NOT NULL AND parent_key IS NOT NULL"
    )
    op.execute(
        "UPDATE generations SET inputs = ("
        " SELECT json_group_array(kept.job_key) FROM ("
        "  SELECT images.job_key FROM images"
        "  WHERE substr(images.job_key, 1, length(generations.job_key) + 3)"
        "   = generations.job_key || '\\:in'"
        "  ORDER BY images.job_key"
        " ) AS kept"
        ") WHERE kind = 'edit'"
    )


def downgrade() -> None:
    op.execute("UPDATE generations SET kind = 'variation' WHERE kind = 'vary'")
    op.drop_column("generations", "inputs")
