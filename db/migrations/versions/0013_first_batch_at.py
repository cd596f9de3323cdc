"""When a job's first batch was done (`jobs.first_batch_at`, set by the device worker that committed
it): the submit → first batch wait, exported by the API as a histogram (issue 13).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("first_batch_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("jobs", "first_batch_at")
