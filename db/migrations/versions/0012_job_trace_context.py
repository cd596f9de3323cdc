"""The trace a job belongs to: `jobs.traceparent` holds the W3C trace context of the request that
submitted it, so the dispatcher, the Dagster run, its ops, the device workers' batches and the
terminal sensor all add their spans to that one trace (issue 13); `steps.traceparent` is the span
of the op that admitted the job to a device, the parent of that device's batch spans.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("traceparent", sa.Text()))
    op.add_column("steps", sa.Column("traceparent", sa.Text()))


def downgrade() -> None:
    op.drop_column("steps", "traceparent")
    op.drop_column("jobs", "traceparent")
