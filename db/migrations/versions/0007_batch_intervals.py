"""Each batch's interval on its device, for the device timeline (`GET /gpus/timeline`).

`tile_chunks.started_at` / `finished_at` are when the device began and ended computing the batch
(before: `finished_at` was the commit's time and the start was not kept). An index serves "the
batches each device ran in the last minutes".

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE tile_chunks ADD COLUMN started_at timestamptz;
        CREATE INDEX tile_chunks_recent_idx ON tile_chunks (finished_at) WHERE state = 'done';
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX tile_chunks_recent_idx; ALTER TABLE tile_chunks DROP COLUMN started_at;")
