"""Idempotent job submission and keyset-paginated listing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- POST /jobs with an Idempotency-Key returns the job the key first created (per account);
        -- the request's hash tells a true repeat from a different request reusing the key.
        ALTER TABLE jobs ADD COLUMN idempotency_key text;
        ALTER TABLE jobs ADD COLUMN request_hash text;
        CREATE UNIQUE INDEX jobs_idempotency_key_idx ON jobs (account_id, idempotency_key)
            WHERE idempotency_key IS NOT NULL;

        -- GET /jobs pages newest first by (created_at, id).
        CREATE INDEX jobs_created_id_idx ON jobs (created_at DESC, id DESC);
        CREATE INDEX areas_account_created_idx ON areas (account_id, created_at);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX areas_account_created_idx;
        DROP INDEX jobs_created_id_idx;
        DROP INDEX jobs_idempotency_key_idx;
        ALTER TABLE jobs DROP COLUMN request_hash;
        ALTER TABLE jobs DROP COLUMN idempotency_key;
        """
    )
