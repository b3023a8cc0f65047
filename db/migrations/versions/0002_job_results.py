"""job results: when a job's result was written down, before its upload

A job's result (seed, size, steps, model, timings, worker) is now stored *before* the image is
uploaded, with the status ``delivering``; ``result_at`` says when. After a crash in the middle of
the upload, the next start completes the row from these fields alone (it finds the delivered
message by its button) instead of reading them back out of the message.

Revision ID: 0002_job_results
Revises: 0001
Create Date: 2026-11-30 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002_job_results"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("result_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    # The older bot knows no "delivering" status and would never resume such a row: hand it
    # back as "running", which that bot resumes (or refunds) at its next start.
    op.execute(sa.text("UPDATE generations SET status = 'running' WHERE status = 'delivering'"))
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_column("result_at")
