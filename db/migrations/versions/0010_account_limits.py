"""Per-account limits: `accounts.limits` holds an operator's overrides of the defaults for members
(highest priority, jobs queued or running, tiles queued or running, open streams); `{}` = defaults.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE accounts ADD COLUMN limits jsonb NOT NULL DEFAULT '{}'::jsonb;
        CREATE INDEX jobs_account_active_idx ON jobs (account_id) WHERE state IN ('queued', 'running');
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX jobs_account_active_idx; ALTER TABLE accounts DROP COLUMN limits;")
