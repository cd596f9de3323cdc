"""Indexes for the dashboard's reads: tiles inferred per minute (Overview) and the Jobs table's sorts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE INDEX tile_results_created_at_idx ON tile_results (created_at);
        CREATE INDEX jobs_priority_created_id_idx ON jobs (priority DESC, created_at DESC, id DESC);
        CREATE INDEX jobs_name_id_idx ON jobs (name, id);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX jobs_name_id_idx;
        DROP INDEX jobs_priority_created_id_idx;
        DROP INDEX tile_results_created_at_idx;
        """
    )
