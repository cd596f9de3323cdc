"""The device a serial job is bound to (`jobs.device_uuid`, set by the launch that chose it): the
dispatcher places the next serial job by the tiles already bound to each device, from this table
alone (issue 11).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("device_uuid", sa.Text))


def downgrade() -> None:
    op.drop_column("jobs", "device_uuid")
